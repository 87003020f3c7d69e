"""``lungseg segment`` of two commits on the same files, runs alternated: one run, ratios.

This machine's speed drifts by up to ±30 % between runs, more than most single changes
gain; alternating the base commit and the working tree within one run compares them under
the same conditions. The base is checked out in a temporary git worktree and run with the
same virtual environment (``PYTHONPATH`` puts its ``pipeline`` first; its own bundle is
used). Each run is a whole ``python -m pipeline.cli segment`` process (default outputs: SEG,
mask, overlay): wall seconds, the steady-state rate from ``summary.json`` and the CPU
seconds of the process tree.

    .venv/bin/python benchmarks/segment_ab.py --base cc0b3ee [--inputs 512] [--counts 100 1000]

``--fsync-delay-ms 3`` makes every fsync of both runs wait 3 ms (``slow_storage.py``), as a
network share or a spinning disk would. ``--archive zip`` (or ``tar.gz``) gives the files as
one archive (deflated or gzipped, made once beside the folder) and reports the most bytes
``OUT/archives`` and ``OUT/dicomweb`` held while the job ran (sampled every 20 ms).
``--dicomweb`` stores the files in an Orthanc on loopback (``make test-deps`` installs it;
started and stopped here) and gives its DICOMweb root as the input: every run fetches them
afresh.

The DICOM folders are the ones ``segment_throughput.py`` builds (same ``--work``). Prints a
Markdown table; ``--out`` also writes the runs as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_throughput import INPUTS, ROOT, build_folder

sys.path.insert(0, str(ROOT))
from slow_storage import fsync_delay_env


def worktree(rev: str, where: Path) -> Path:
    """Check out ``rev`` in a detached worktree under ``where``."""
    path = where / "base"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(path), rev], check=True
    )
    return path


def run_once(
    code: Path, folder: Path | str, out: Path, env: dict[str, str], extra: Sequence[str] = ()
) -> dict:
    """One whole ``lungseg segment`` of ``folder`` with the package under ``code``.

    ``env``: variables added to the process's environment (:mod:`slow_storage`'s);
    ``extra``: more options of ``lungseg segment``.
    """
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done, peak = threading.Event(), [0]
    staged = (out / "archives", out / "dicomweb")
    watcher = threading.Thread(target=_watch, args=(staged, done, peak), daemon=True)
    watcher.start()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "segment",
            str(folder),
            "-o",
            str(out),
            "--no-progress",
            *extra,
        ],
        cwd=code,
        env={**os.environ, **env, "PYTHONPATH": str(code)},
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = json.loads((out / "summary.json").read_text())
    return {
        "wall_s": round(wall, 2),
        "steady": summary["this_run"]["images_per_second"],
        "cpu_s": round(cpu, 2),
        "archives_peak_mib": round(peak[0] / 2**20, 1),
        "version": summary["model"]["version"],
    }


def _watch(folders: tuple[Path, ...], done: threading.Event, peak: list[int]) -> None:
    """Keep in ``peak[0]`` the most bytes of files under ``folders`` until ``done``."""
    while not done.wait(0.02):
        peak[0] = max(peak[0], sum(map(_bytes_under, folders)))


def _bytes_under(folder: Path) -> int:
    total = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += _bytes_under(Path(entry.path))
            else:
                total += entry.stat(follow_symlinks=False).st_size
        except OSError:  # removed meanwhile
            continue
    return total


def as_archive(folder: Path, kind: str) -> Path:
    """``folder``'s files in one archive beside it (made once; members under its name)."""
    import tarfile

    archive = folder.with_name(f"{folder.name}.{kind}")
    if not archive.is_file():
        partial = archive.with_name(f"{archive.name}.partial")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        if kind == "zip":
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in files:
                    zf.write(path, path.relative_to(folder.parent).as_posix())
        else:
            with tarfile.open(partial, "w:gz") as tf:
                for path in files:
                    tf.add(path, path.relative_to(folder.parent).as_posix())
        partial.replace(archive)
    return archive


@contextlib.contextmanager
def served(folder: Path, scratch: Path, delay: float = 0.0) -> Iterator[str]:
    """``folder``'s DICOM files in an Orthanc on loopback; yields its ``dicomweb+`` input.

    ``delay``: seconds every request waits on its way (:mod:`slow_network`).
    """
    import urllib.request

    from slow_network import delayed_proxy

    from tests.conftest import running_orthanc

    scratch.mkdir(parents=True, exist_ok=True)
    with running_orthanc(scratch) as server:
        for path in sorted(folder.rglob("*.dcm")):
            request = urllib.request.Request(
                server["http"] + "/instances", data=path.read_bytes(), method="POST"
            )
            urllib.request.urlopen(request, timeout=60).read()
        if not delay:
            yield "dicomweb+" + server["url"]
            return
        with delayed_proxy(server["url"], delay) as url:
            yield "dicomweb+" + url


def compare(
    base: Path,
    folder: Path | str,
    repeats: int,
    scratch: Path,
    env: dict[str, str],
    extra: Sequence[str] = (),
) -> dict[str, list[dict]]:
    """Alternate base and working tree ``repeats`` times each on ``folder``."""
    runs: dict[str, list[dict]] = {"base": [], "new": []}
    for _ in range(repeats):
        for name, code in (("base", base), ("new", ROOT)):
            runs[name].append(run_once(code, folder, scratch / f"out-{name}", env, extra))
    return runs


def row(label: str, count: int, runs: dict[str, list[dict]]) -> str:
    """A table row: medians of base and new, and new / base."""
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "steady", "cpu_s")}
        for k, v in runs.items()
    }
    b, n = med["base"], med["new"]
    peak = {k: max(r.get("archives_peak_mib", 0.0) for r in v) for k, v in runs.items()}
    staged = (
        f" (OUT/archives + OUT/dicomweb peak {peak['base']:g} → {peak['new']:g} MiB)"
        if any(peak.values())
        else ""
    )
    label += staged
    return (
        f"| {label} | {count} | {len(runs['new'])} | {b['wall_s']:.2f} | {n['wall_s']:.2f} | "
        f"{b['wall_s'] / n['wall_s']:.2f} | {b['steady']:.1f} | {n['steady']:.1f} | "
        f"{n['steady'] / b['steady']:.2f} | {b['cpu_s']:.1f} | {n['cpu_s']:.1f} | "
        f"{n['cpu_s'] / b['cpu_s']:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--inputs", nargs="+", default=["512"], choices=list(INPUTS))
    parser.add_argument("--counts", type=int, nargs="+", default=[100])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--distinct", type=int, default=100)
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench-segment")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--fsync-delay-ms", type=float, default=0.0, help="slow storage: each fsync waits this"
    )
    parser.add_argument(
        "--archive", choices=["zip", "tar.gz"], help="the files as one archive of this kind"
    )
    parser.add_argument(
        "--dicomweb", action="store_true", help="the files from an Orthanc on loopback"
    )
    parser.add_argument(
        "--network-delay-ms", type=float, default=0.0, help="--dicomweb: each request waits"
    )
    parser.add_argument(
        "--store-back", action="store_true", help="--dicomweb: lungseg's --store-back"
    )
    parser.add_argument(
        "--precision", help="lungseg's --precision, both sides (default: the bundle's)"
    )
    args = parser.parse_args()
    env = fsync_delay_env(args.fsync_delay_ms, args.work)
    storage = f", every fsync {args.fsync_delay_ms:g} ms longer" if env else ""
    if args.dicomweb:
        storage += f", from Orthanc on loopback (every request {args.network_delay_ms:g} ms later)"
        storage += ", with --store-back" if args.store_back else ""
    storage += f", --precision {args.precision}" if args.precision else ""
    lines = [
        f"Base {args.base} against the working tree, runs alternated, medians{storage}.",
        "",
        "| input | N | runs each | base whole (s) | new whole (s) | speed-up | base steady "
        "(img/s) | new steady (img/s) | new / base | base CPU (s) | new CPU (s) | new / base |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = worktree(args.base, Path(tmp))
        try:
            for name in args.inputs:
                for count in args.counts:
                    folder = build_folder(name, count, args.distinct, args.work)
                    folder = as_archive(folder, args.archive) if args.archive else folder
                    with contextlib.ExitStack() as stack:
                        if args.dicomweb:
                            orthanc = Path(tmp) / f"orthanc-{name}-{count}"
                            delay = args.network_delay_ms / 1000
                            folder = stack.enter_context(served(folder, orthanc, delay))
                        extra = ["--store-back"] if args.store_back else []
                        extra += ["--precision", args.precision] if args.precision else []
                        runs = compare(base, folder, args.repeats, Path(tmp), env, extra)
                    lines.append(row(INPUTS[name][3], count, runs))
                    results.append(
                        {
                            "input": name,
                            "count": count,
                            "fsync_delay_ms": args.fsync_delay_ms,
                            "archive": args.archive,
                            "dicomweb": args.dicomweb,
                            "network_delay_ms": args.network_delay_ms,
                            "store_back": args.store_back,
                            "runs": runs,
                        }
                    )
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False
            )
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
