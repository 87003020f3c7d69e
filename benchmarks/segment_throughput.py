"""Batch segmentation throughput and memory: ``lungseg segment`` against a hand-written loop.

Builds DICOM folders from the shared images in the encodings hospitals send (512² 16-bit
uncompressed, 512² uncompressed and RLE in turn as in the issue's set of 208 files, 2048²
12-bit JPEG 2000, 3000 x 2500 16-bit uncompressed, 2048² JPEG Lossless SV1, HTJ2K and
JPEG-LS, and up to 512² files that differ in size and pixel spacing as cropped detector
images do), N files each, and for each folder, in one run:

- ``lungseg segment`` (default outputs: SEG, mask, overlay) as a child process, timed whole
  (start-up included), its steady-state rate from ``summary.json``, the time per stage; then
  once more for the peak memory of its whole process tree (PSS: shared pages counted once),
  sampled in that second run only (sampling slows the job: :func:`run_segment`);
- the hand-written loop of ``benchmarks/handwritten_loop.py`` (pydicom + LUTs, resize,
  TorchScript at batch 1, mask PNG), as a whole process too;
- the network's forward pass alone at the same batch size (the shipped model), measured
  before and after the job and averaged (this machine's speed drifts within a run).

Stage columns are CPU milliseconds per image (``summary.json``'s ``stage_cpu_seconds``: the
work done); the wall time outside the network also counts the workers' waits for a core
(they run at the lowest priority), the disk and their inputs.

    .venv/bin/python benchmarks/segment_throughput.py [--inputs 512 2048-j2k ...] [--counts 100]

For N above the number of distinct files built (``--distinct``, default 100), the folder
holds hard links in sub-folders: decoding costs the same, the SOP UIDs repeat. Prints a
Markdown table; ``--out`` also writes it as JSON. Runs unchanged on CUDA (``--device``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from slow_storage import fsync_delay_env  # beside this script (sys.path[0])

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("decode", "preprocess", "forward", "postprocess", "seg_encode", "write")
#: Benchmark inputs: name -> (rows, columns, DicomVariant value(s), description). With
#: several variants the files take them in turn.
INPUTS = {
    "512": (512, 512, "mono2-16bit", "512² 16-bit uncompressed"),
    # the set the issue was measured on: 208 files, uncompressed and RLE (--counts 208)
    "512-mixed": (512, 512, ("mono2-16bit", "rle"), "512² 16-bit uncompressed + RLE"),
    "2048-j2k": (2048, 2048, "jpeg2000", "2048² 12-bit JPEG 2000 lossless"),
    "3000x2500": (3000, 2500, "mono2-16bit", "3000 x 2500 16-bit uncompressed"),
    "2048-jpeg-lossless": (2048, 2048, "jpeg-lossless", "2048² 12-bit JPEG Lossless SV1"),
    "2048-htj2k": (2048, 2048, "htj2k", "2048² 16-bit HTJ2K lossless"),
    "2048-jpeg-ls": (2048, 2048, "jpeg-ls", "2048² 8-bit JPEG-LS lossless"),
    # as detectors cropped to the collimation export them: every file its own size and
    # calibrated pixel spacing (440-512 rows, 391-512 columns)
    "512-cropped": (512, 512, "mono2-16bit", "≤ 512² 16-bit uncompressed, sizes and spacings vary"),
}
#: Inputs whose files differ in size and pixel spacing (:func:`_cropped`).
CROPPED = frozenset({"512-cropped"})


def build_folder(name: str, count: int, distinct: int, work: Path) -> Path:
    """A folder of ``count`` DICOM files of input ``name`` (cached under ``work``)."""
    from PIL import Image

    from pipeline.io.convert import build_dicom, write_dicom
    from pipeline.io.datasets import default_data_dir, list_cases

    rows, cols, variants, _ = INPUTS[name]
    variants = (variants,) if isinstance(variants, str) else variants
    base = work / f"base-{name}"
    cases = list_cases(default_data_dir())[:distinct]
    if len(list(base.glob("*.dcm"))) < len(cases):
        for i, case in enumerate(cases):
            variant = variants[i % len(variants)]
            with Image.open(case.image) as img:
                big = np.asarray(img.convert("L").resize((cols, rows), Image.Resampling.BICUBIC))
            spacing = 0.7 * 512 / rows
            if name in CROPPED:
                big, spacing = _cropped(big, i), spacing * (1 + (i % 7) / 100)
            ds = build_dicom(big, variant, name=f"{case.name}-{name}", spacing_mm=spacing)
            if name in CROPPED:  # calibrated: Pixel Spacing beside the detector's own
                ds.PixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
            write_dicom(ds, base / f"{Path(case.name).stem}.dcm")
    folder = work / f"dicom-{name}-{count}"
    if len(list(folder.rglob("*.dcm"))) != count:
        files = sorted(base.glob("*.dcm"))
        for i in range(count):
            target = folder / f"copy{i // len(files):03d}" / files[i % len(files)].name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(files[i % len(files)], target)
    return folder


def _cropped(image: np.ndarray, i: int) -> np.ndarray:
    """The ``i``-th file's crop of ``image``: centred, 0-72 rows and 0-121 columns fewer."""
    rows, cols = image.shape[0] - 8 * (i % 10), image.shape[1] - 11 * (i % 12)
    top, left = (image.shape[0] - rows) // 2, (image.shape[1] - cols) // 2
    return np.ascontiguousarray(image[top : top + rows, left : left + cols])


def _tree_pss_kib(pid: int) -> tuple[int, int]:
    """Proportional set size of ``pid`` and of all its descendants, in KiB (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    own, total, stack = 0, 0, [pid]
    while stack:
        p = stack.pop()
        stack += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    own = own or total
        except OSError:
            continue
    return own, total - own


def run_segment(folder: Path, out: Path, args: argparse.Namespace, memory: bool = False) -> dict:
    """Run ``lungseg segment`` in a child process; return its summary (and peak memory).

    With ``memory``, its process tree's PSS is sampled every 0.2 s. Reading
    ``smaps_rollup`` walks each process's page tables under its memory-map lock, which
    stalls the job: sampled runs ran 7-24 % slower (whole process) on this 2-core machine,
    so timings come from an unsampled run and memory from a second, sampled one.
    """
    cmd = [sys.executable, "-m", "pipeline.cli", "segment", str(folder), "-o", str(out)]
    cmd += ["--no-progress", "--overwrite", "--workers", str(args.workers)]
    cmd += ["--batch-size", str(args.batch_size), "--device", args.device]
    cmd += ["--precision", args.precision] if args.precision else []
    peak, start = [0, 0, 0], time.perf_counter()  # tree, main process, workers
    env = {**os.environ, **getattr(args, "env", {})}  # slow storage stood in for, if asked
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )

    def sample() -> None:
        while memory and proc.poll() is None:
            own, workers = _tree_pss_kib(proc.pid)
            peak[:] = max(peak[0], own + workers), max(peak[1], own), max(peak[2], workers)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.communicate()[0]
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"lungseg segment failed ({proc.returncode}):\n{output[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["wall_seconds"] = time.perf_counter() - start
    summary["peak_pss_mib"] = peak[0] / 1024
    summary["peak_main_mib"], summary["peak_workers_mib"] = peak[1] / 1024, peak[2] / 1024
    return summary


def parse_or_run_child(
    parser: argparse.ArgumentParser, child: Callable[..., None]
) -> argparse.Namespace | None:
    """Parse the command line with ``--work`` and a hidden ``--child A B C`` added.

    Returns:
        The arguments; None after running ``child(A, B, C)`` when ``--child`` was given
        (the benchmark's own child process).
    """
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench-segment")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return None
    return args


def segment_with(stand_ins: Callable[[], None], argv: list[str]) -> int:
    """``lungseg segment argv`` in this process, ``stand_ins()`` run after its start-up.

    The stand-ins go in once the command has imported MONAI its lean way and set its
    OpenMP wait policy (:mod:`pipeline.lean`): importing torch or the batch job's modules
    before that would import MONAI in full and leave the network's threads spinning.
    """
    import pipeline.cli as cli

    real_dispatch = cli._dispatch

    def dispatch(args: argparse.Namespace) -> int:
        stand_ins()
        return real_dispatch(args)

    cli._dispatch = dispatch
    return cli.main(["segment", *argv])


def forward_only(folder: Path, args: argparse.Namespace) -> float:
    """The network alone: images/s on one preprocessed batch, repeated."""
    from pipeline.inference.predictor import Predictor

    model = Predictor(device=args.device, overrides=_overrides(args))
    image = model.preprocess(model.load(next(folder.rglob("*.dcm"))))["image"]
    batch = [image] * args.batch_size
    for _ in range(3):
        model.forward(batch)
    reps, start = 20, time.perf_counter()
    for _ in range(reps):
        model.forward(batch)
    return reps * args.batch_size / (time.perf_counter() - start)


def _overrides(args: argparse.Namespace) -> dict:
    return {"precision": args.precision} if args.precision else {}


#: The hand-written loop runs on folders of up to this many files (~25 img/s here).
LOOP_MAX = 250


def handwritten_loop(
    folder: Path, out: Path, limit: int = 100, device: str = "cpu", env: dict | None = None
) -> float:
    """The hand-written loop as a whole process (imports included); images/s.

    Its model runs on ``device``, the job's (a user with a GPU puts it there). ``env``:
    variables added to its environment (the job's slow storage, if any).
    """
    from pipeline.inference.bundle import BUNDLE

    files = [str(p) for p in sorted(folder.rglob("*.dcm"))[:limit]]
    script = ROOT / "benchmarks" / "handwritten_loop.py"
    cmd = [sys.executable, str(script), "--device", device]
    cmd += [str(Path(BUNDLE) / "models" / "model.ts"), str(out)]
    start = time.perf_counter()
    environment = {**os.environ, **(env or {})}
    subprocess.run([*cmd, *files], check=True, capture_output=True, env=environment)
    return len(files) / (time.perf_counter() - start)


def measure(name: str, count: int, args: argparse.Namespace) -> dict:
    """One row: ``lungseg segment``, the loop and the forward pass on one folder."""
    folder = build_folder(name, count, args.distinct, args.work)
    forward_before = forward_only(folder, args)  # measured around the job: the machine drifts
    summary = run_segment(folder, args.work / f"out-{name}-{count}", args)
    sampled = run_segment(folder, args.work / f"out-{name}-{count}-memory", args, memory=True)
    run = summary["this_run"]
    loop = None
    if count <= LOOP_MAX:  # on the job's device, as its user would run it
        loop = handwritten_loop(
            folder, args.work / "loop", count, summary["device"], getattr(args, "env", {})
        )
    forward = (forward_before + forward_only(folder, args)) / 2
    per_image = {s: 1000 * run["stage_seconds"][s] / count for s in STAGES}
    cpu = {s: 1000 * run["stage_cpu_seconds"][s] / count for s in STAGES}
    return {
        "input": name,
        "count": count,
        "device": summary["device"],
        "resources": summary.get("resources", {}),
        "precision": summary["model"]["precision"],
        "whole_process": count / summary["wall_seconds"],
        "steady_state": run["images_per_second"],
        "handwritten_loop": loop,
        "forward_only": forward,
        "steady_vs_forward": run["images_per_second"] / forward,
        "whole_vs_loop": None if loop is None else count / summary["wall_seconds"] / loop,
        "outside_network_ms": sum(v for k, v in per_image.items() if k != "forward"),
        "outside_network_cpu_ms": sum(v for k, v in cpu.items() if k != "forward"),
        "stage_ms_per_image": per_image,
        "stage_cpu_ms_per_image": cpu,
        "peak_pss_mib": sampled["peak_pss_mib"],
        "peak_main_mib": sampled["peak_main_mib"],
        "peak_workers_mib": sampled["peak_workers_mib"],
        "counts": summary["counts"],
    }


def main() -> None:
    """Build the folders, run the benchmark, print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    parser.add_argument("--counts", type=int, nargs="+", default=[100])
    parser.add_argument("--distinct", type=int, default=100)
    parser.add_argument("--workers", default="auto", help="lungseg's --workers (default: auto)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", help="lungseg's --precision (default: the bundle's)")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench-segment")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--fsync-delay-ms",
        type=float,
        default=0.0,
        help="slow storage: each fsync of the job and the loop waits this (slow_storage.py)",
    )
    args = parser.parse_args()
    args.env = fsync_delay_env(args.fsync_delay_ms, args.work)

    results = []
    for name in args.inputs:
        for count in args.counts:
            results.append(measure(name, count, args))
            print(json.dumps(results[-1]), flush=True)
    print(table(results, args))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def table(results: list[dict], args: argparse.Namespace) -> str:
    """The results as a Markdown table."""
    device = results[0]["device"] if results else "?"
    precision = results[0]["precision"] if results else "?"
    used = results[0].get("resources", {}) if results else {}
    head = (
        f"Device: {device}, {os.cpu_count()} CPU cores ({used.get('usable_cpus', '?')} usable), "
        f"batch {args.batch_size}, {used.get('workers', args.workers)} workers "
        f"(--workers {args.workers}), {used.get('network_threads', '?')} network threads, "
        f"{precision}; formats seg, mask, overlay"
        + (f"; every fsync {args.fsync_delay_ms:g} ms longer" if getattr(args, "env", {}) else "")
        + ".\n\n"
        "| input | N | whole process (img/s) | steady state (img/s) | hand-written loop, "
        "whole process (img/s) | forward only (img/s) | steady / forward | whole / loop | "
        "outside the network, CPU (ms/img) | outside the network, wall (ms/img) | "
        + " | ".join(f"{s}, CPU (ms/img)" for s in STAGES)
        + " | peak memory (MiB) |\n|"
        + "---|" * (11 + len(STAGES))
    )
    rows = []
    for r in results:
        stages = " | ".join(f"{r['stage_cpu_ms_per_image'][s]:.1f}" for s in STAGES)
        loop = "-" if r["handwritten_loop"] is None else f"{r['handwritten_loop']:.2f}"
        ratio = "-" if r["whole_vs_loop"] is None else f"{r['whole_vs_loop']:.2f}"
        rows.append(
            f"| {INPUTS[r['input']][3]} | {r['count']} | {r['whole_process']:.2f} | "
            f"{r['steady_state']:.2f} | {loop} | {r['forward_only']:.1f} | "
            f"{r['steady_vs_forward']:.2f} | {ratio} | {r['outside_network_cpu_ms']:.0f} | "
            f"{r['outside_network_ms']:.0f} | "
            f"{stages} | {r['peak_pss_mib']:.0f} |"
        )
    return "\n".join([head, *rows])


if __name__ == "__main__":
    main()
