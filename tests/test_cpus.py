"""CPUs a process may use: the affinity mask and the cgroup's quota (v1 and v2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline.cpus as cpus
from pipeline.cpus import cgroup_cpu_limit, fit_threads_to_cpus, usable_cpus


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def v1_quota(folder: Path, quota: int, period: int = 100_000) -> None:
    write(folder / "cpu.cfs_quota_us", str(quota))
    write(folder / "cpu.cfs_period_us", str(period))


def test_cgroup_v2_takes_the_lowest_quota_along_the_path(tmp_path):
    write(tmp_path / "cpu.max", "max 100000")
    write(tmp_path / "kubepods" / "cpu.max", "300000 100000")
    write(tmp_path / "kubepods" / "pod1" / "cpu.max", "150000 100000")
    write(tmp_path / "kubepods" / "pod1" / "c1" / "cpu.max", "max 100000")
    assert cgroup_cpu_limit("0::/kubepods/pod1/c1\n", tmp_path) == 1.5
    assert cgroup_cpu_limit("0::/kubepods\n", tmp_path) == 3.0
    assert cgroup_cpu_limit("0::/\n", tmp_path) is None  # "max": no quota


def test_cgroup_v1_reads_the_cpu_controller_whatever_its_folder_is_called(tmp_path):
    v1_quota(tmp_path / "cpu,cpuacct" / "docker" / "abc", 50_000)
    v1_quota(tmp_path / "cpu,cpuacct", -1)
    text = "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    assert cgroup_cpu_limit(text, tmp_path) == 0.5
    v1_quota(tmp_path / "cpu,cpuacct" / "docker" / "abc", -1)  # -1: no quota
    assert cgroup_cpu_limit(text, tmp_path) is None


def test_a_container_whose_own_cgroup_folder_is_not_visible_reads_the_mounted_root(tmp_path):
    v1_quota(tmp_path / "cpu", 200_000)  # what docker mounts at /sys/fs/cgroup/cpu
    assert cgroup_cpu_limit("3:cpu:/docker/0123abcd\n", tmp_path) == 2.0


def test_no_cgroup_no_quota(tmp_path):
    assert cgroup_cpu_limit("", tmp_path) is None
    assert cgroup_cpu_limit("0::/a\n", tmp_path / "missing") is None
    write(tmp_path / "cpu.max", "garbage")
    assert cgroup_cpu_limit("0::/\n", tmp_path) is None


def test_usable_cpus_is_the_mask_capped_by_the_quota_rounded_up(tmp_path, monkeypatch):
    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 8)
    for quota, expected in ((50_000, 1), (150_000, 2), (400_000, 4), (1_600_000, 8)):
        write(tmp_path / "cpu.max", f"{quota} 100000")
        assert usable_cpus("0::/\n", tmp_path) == expected
    write(tmp_path / "cpu.max", "max 100000")
    assert usable_cpus("0::/\n", tmp_path) == 8


def test_threads_fit_a_quota_unless_the_user_chose_or_torch_is_loaded(one_cpu_quota, monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as before torch loads
    env: dict[str, str] = {}
    assert fit_threads_to_cpus(env) == 1 and env == {"OMP_NUM_THREADS": "1"}
    chosen = {"OMP_NUM_THREADS": "3"}
    assert fit_threads_to_cpus(chosen) is None and chosen == {"OMP_NUM_THREADS": "3"}
    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 1)  # the mask binds: OpenMP sees it
    assert fit_threads_to_cpus({}) is None


def test_threads_are_left_alone_once_torch_is_loaded(one_cpu_quota):
    import torch  # noqa: F401  (loaded: OMP_NUM_THREADS would not be read any more)

    env: dict[str, str] = {}
    assert fit_threads_to_cpus(env) is None and env == {}


SCRIPT = """
import sys
from pathlib import Path

import pytest
import pipeline.cpus as cpus
cpus.CGROUP_ROOT, cpus.PROC_CGROUP = Path(sys.argv[1]), Path(sys.argv[2])
cpus.affinity_cpus = lambda: 4
print(cpus.fit_threads_to_cpus())
import torch
print(torch.get_num_threads())
"""


def test_torch_runs_as_many_threads_as_the_quota_allows(one_cpu_quota):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    args = [str(cpus.CGROUP_ROOT), str(cpus.PROC_CGROUP)]
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.split() == ["1", "1"]


@pytest.mark.parametrize(
    ("value", "cpus", "env", "expected"),
    [
        ("auto", 2, {}, 1),  # what this project's CPU trainings ran with
        ("auto", 1, {}, 0),  # loading in the training process
        ("auto", 16, {}, 8),  # capped
        ("auto", 16, {"LOCAL_WORLD_SIZE": "4"}, 3),  # a node's CPUs shared by its ranks
        ("3", 2, {}, 3),
        (0, 2, {}, 0),
    ],
)
def test_loader_workers_auto_leaves_the_training_loop_a_cpu(value, cpus, env, expected):
    from pipeline.cpus import loader_workers

    assert loader_workers(value, cpus=cpus, env=env) == expected


def test_train_workers_auto_is_resolved_and_a_bad_value_is_a_usage_error(
    one_cpu_quota, monkeypatch, capsys
):
    """``lungseg train --workers`` took only a number; ``auto`` now sizes it to the CPUs."""
    import pipeline.training.run as run
    from pipeline.cli import EXIT_USAGE, main

    seen = {}

    def fake_train(options, extra):
        seen.update(options)
        raise SystemExit(0)

    monkeypatch.setattr(run, "train_from_options", fake_train)
    with pytest.raises(SystemExit):
        main(["train", "--workers", "auto", "--max-cases", "1"])
    assert seen["workers"] == 0  # one CPU (the quota): the training loop keeps it
    assert main(["train", "--workers", "many"]) == EXIT_USAGE
    assert "--workers 'many' must be auto or a whole number >= 0" in capsys.readouterr().err
