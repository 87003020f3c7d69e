"""How many CPUs this process may use, and its OpenMP threads sized to them.

``os.cpu_count()`` counts the machine's CPUs. A process may use fewer:

- its **affinity mask** (``taskset``, Slurm's cpusets, Kubernetes' static CPU manager),
  which OpenMP, and so torch, already honours;
- its cgroup's **CPU quota** (``docker run --cpus``, Kubernetes CPU limits, systemd's
  ``CPUQuota``: cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``),
  which OpenMP ignores: in a container limited to 4 CPUs on a 64-core host, torch starts a
  thread per core, and the 64 threads share 4 CPUs' worth of time, stopped by the kernel
  for the rest of each period.

:func:`usable_cpus` takes both; :func:`fit_threads_to_cpus` sets ``OMP_NUM_THREADS`` to it
before torch loads when a quota is the tighter limit (the command line does, for every
command); :func:`pipeline.inference.segment.resolve_workers` sizes ``lungseg segment``'s
worker processes by it, :func:`loader_workers` ``lungseg train --workers auto``'s data
loader.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path

#: Where the cgroup file systems are mounted (v2: one hierarchy; v1: one per controller).
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: This process's cgroups (``HIERARCHY:CONTROLLERS:PATH`` lines).
PROC_CGROUP = Path("/proc/self/cgroup")
#: Folder names of the v1 ``cpu`` controller's hierarchy, as distributions mount it.
V1_CPU_FOLDERS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cgroup_cpu_limit(proc_cgroup: str | None = None, root: Path | None = None) -> float | None:
    """The CPU quota of this process's cgroup, in CPUs (e.g. 1.5); None without one.

    The lowest quota along the cgroup's path counts (a parent's limit binds its children).
    Where the process's own cgroup folder is not visible (a container without its own
    cgroup namespace), the hierarchy's root folder is read: container runtimes mount the
    container's cgroup there.

    Args:
        proc_cgroup: the text of ``/proc/self/cgroup`` (default: read from :data:`PROC_CGROUP`).
        root: where the cgroup file systems are mounted (default: :data:`CGROUP_ROOT`).
    """
    root = CGROUP_ROOT if root is None else root
    if proc_cgroup is None:
        try:
            proc_cgroup = PROC_CGROUP.read_text()
        except OSError:  # not Linux, or /proc not mounted
            return None
    limits = []
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:  # cgroup v2
            limits += _limits_along(root, path, _v2_limit)
        elif "cpu" in controllers.split(","):
            for name in V1_CPU_FOLDERS:
                limits += _limits_along(root / name, path, _v1_limit)
    return min(limits, default=None)


def _limits_along(base: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """Quotas (CPUs) read by ``read`` in ``base/path`` and each of its parents up to ``base``."""
    if not base.is_dir():
        return []
    parts = [p for p in path.strip("/").split("/") if p]
    folders = [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    if not folders[0].is_dir():  # the process's own folder is not visible here
        folders = [base]
    return [limit for folder in folders if (limit := read(folder)) is not None]


def _v2_limit(folder: Path) -> float | None:
    """``cpu.max`` (``"QUOTA PERIOD"`` in microseconds, ``max`` for none) as CPUs."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_limit(folder: Path) -> float | None:
    """``cpu.cfs_quota_us`` (-1 for none) over ``cpu.cfs_period_us``, as CPUs."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def usable_cpus(proc_cgroup: str | None = None, root: Path | None = None) -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's quota.

    A fractional quota is rounded up (1.5 CPUs: 2), at least 1.
    """
    cpus = affinity_cpus()
    limit = cgroup_cpu_limit(proc_cgroup, root)
    return cpus if limit is None else max(1, min(cpus, math.ceil(limit)))


def fit_threads_to_cpus(env: MutableMapping[str, str] | None = None) -> int | None:
    """Set ``OMP_NUM_THREADS`` to :func:`usable_cpus` where a CPU quota is the tighter limit.

    OpenMP reads it once, when torch loads its runtime, so this must run before torch is
    imported; child processes inherit it. Nothing is set when the user set
    ``OMP_NUM_THREADS``, when torch is already loaded, or when the affinity mask, which
    OpenMP honours by itself, is the tighter limit.

    Returns:
        The thread count set, or None.
    """
    env = os.environ if env is None else env
    if "torch" in sys.modules or "OMP_NUM_THREADS" in env:
        return None
    cpus = usable_cpus()
    if cpus >= affinity_cpus():
        return None
    env["OMP_NUM_THREADS"] = str(cpus)
    return cpus


#: Most data-loader workers ``auto`` starts for training (augmenting more images at once
#: than a batch needs gains nothing).
MAX_LOADER_WORKERS = 8


def loader_workers(
    workers: int | str, cpus: int | None = None, env: Mapping[str, str] | None = None
) -> int:
    """The data-loader workers ``workers`` (``"auto"`` or a count >= 0) means for training.

    ``auto``: one per usable CPU (:func:`usable_cpus`) but one, which the training loop
    keeps; under torchrun the node's CPUs are shared by its ``LOCAL_WORLD_SIZE`` ranks. At
    most :data:`MAX_LOADER_WORKERS`; 0 (loading in the training process) on one CPU. On 2
    CPUs that is 1, what this project's CPU trainings ran with.

    Raises:
        ValueError: neither ``auto`` nor a whole number >= 0 (the value quoted).
    """
    text = str(workers).strip().lower()
    if text != "auto":
        count = int(text) if text.isdigit() else -1
        if count < 0:
            raise ValueError(f"--workers {workers!r} must be auto or a whole number >= 0")
        return count
    cpus = usable_cpus() if cpus is None else cpus
    ranks = max(1, int((os.environ if env is None else env).get("LOCAL_WORLD_SIZE", 1)))
    return max(0, min(MAX_LOADER_WORKERS, cpus // ranks - 1))
