"""Batch segmentation throughput and memory: ``lungseg segment`` end to end.

Builds DICOM folders from the shared images — 512x512 uncompressed (16-bit) and 2048x2048
JPEG 2000 (the 512x512 images upsampled) — with N files each, runs ``lungseg segment`` on
each folder in a child process while sampling the memory of its whole process tree (PSS:
shared pages counted once), and compares the end-to-end rate with the network's forward
pass alone at the same batch size. ``summary.json`` gives the time per stage.

    .venv/bin/python benchmarks/segment_throughput.py [--counts 100 1000] [--sizes 512 2048]

For N above the number of distinct files built (``--distinct``, default 100), the folder
holds copies in sub-folders: decoding costs the same, the SOP UIDs repeat. Prints a
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("decode", "preprocess", "forward", "postprocess", "seg_encode", "write")


def build_folder(size: int, count: int, distinct: int, work: Path) -> Path:
    """A folder of ``count`` DICOM files at ``size``² (cached under ``work``)."""
    from PIL import Image

    from pipeline.io.convert import DicomVariant, build_dicom, write_dicom
    from pipeline.io.datasets import default_data_dir, list_cases

    variant = DicomVariant.MONO2_16BIT if size <= 512 else DicomVariant.JPEG2000
    base = work / f"base-{size}"
    cases = list_cases(default_data_dir())[:distinct]
    if len(list(base.glob("*.dcm"))) < len(cases):
        for case in cases:
            with Image.open(case.image) as img:
                pixels = np.asarray(img.convert("L").resize((size, size), Image.Resampling.BICUBIC))
            ds = build_dicom(
                pixels, variant, name=f"{case.name}-{size}", spacing_mm=0.7 * 512 / size
            )
            write_dicom(ds, base / f"{Path(case.name).stem}.dcm")
    folder = work / f"dicom-{size}-{count}"
    if len(list(folder.rglob("*.dcm"))) != count:
        files = sorted(base.glob("*.dcm"))
        for i in range(count):
            target = folder / f"copy{i // len(files):03d}" / files[i % len(files)].name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(files[i % len(files)], target)
    return folder


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


def run_segment(folder: Path, out: Path, args: argparse.Namespace) -> dict:
    """Run ``lungseg segment`` in a child process; return its summary plus peak memory."""
    cmd = [sys.executable, "-m", "pipeline.cli", "segment", str(folder), "-o", str(out)]
    cmd += ["--no-progress", "--overwrite", "--workers", str(args.workers)]
    cmd += ["--batch-size", str(args.batch_size), "--device", args.device]
    peak, start = [0, 0, 0], time.perf_counter()  # tree, main process, workers
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def sample() -> None:
        while proc.poll() is None:
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


def forward_only(folder: Path, args: argparse.Namespace) -> float:
    """The network alone: images/s on one preprocessed batch, repeated."""
    from pipeline.inference.predictor import Predictor

    model = Predictor(device=args.device)
    image = model.preprocess(model.load(next(folder.rglob("*.dcm"))))["image"]
    batch = [image] * args.batch_size
    for _ in range(3):
        model.forward(batch)
    reps, start = 20, time.perf_counter()
    for _ in range(reps):
        model.forward(batch)
    return reps * args.batch_size / (time.perf_counter() - start)


def naive_loop(folder: Path, out: Path, args: argparse.Namespace, limit: int = 100) -> float:
    """The baseline: one file at a time, one process, same model and outputs; images/s."""
    from pipeline.enums import OutputFormat
    from pipeline.inference.outputs import Context, write_outputs
    from pipeline.inference.predictor import Predictor

    model = Predictor(device=args.device)
    formats = tuple(OutputFormat.parse(f) for f in ("seg", "mask", "overlay"))
    ctx = Context(out, formats, model.identity, "20260101000000")
    files = sorted(folder.rglob("*.dcm"))[:limit]
    start = time.perf_counter()
    for path in files:
        pred = next(model.predict_from_files([path], 1, keep_image=True))
        write_outputs(path, path.relative_to(folder), pred, pred.image, ctx)
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    """Build the folders, run the benchmark, print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--distinct", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench-segment")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    results = []
    for size in args.sizes:
        for count in args.counts:
            folder = build_folder(size, count, args.distinct, args.work)
            summary = run_segment(folder, args.work / f"out-{size}-{count}", args)
            forward = forward_only(folder, args)
            naive = (
                naive_loop(folder, args.work / "naive", args) if count == min(args.counts) else None
            )
            run = summary["this_run"]
            per_image = {s: 1000 * run["stage_seconds"][s] / count for s in STAGES}
            results.append(
                {
                    "size": size,
                    "count": count,
                    "device": summary["device"],
                    "end_to_end": run["images_per_second"],
                    "forward_only": forward,
                    "ratio": run["images_per_second"] / forward,
                    "naive_loop": naive,
                    "stage_ms_per_image": per_image,
                    "peak_pss_mib": summary["peak_pss_mib"],
                    "peak_main_mib": summary["peak_main_mib"],
                    "peak_workers_mib": summary["peak_workers_mib"],
                    "counts": summary["counts"],
                }
            )
            print(json.dumps(results[-1]), flush=True)
    print(table(results, args))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def table(results: list[dict], args: argparse.Namespace) -> str:
    """The results as a Markdown table."""
    device = results[0]["device"] if results else "?"
    head = (
        f"Device: {device}, {os.cpu_count()} CPU cores, batch {args.batch_size}, "
        f"{args.workers} workers; formats seg, mask, overlay.\n\n"
        "| input | N | end to end (img/s) | naive loop (img/s) | forward only (img/s) | ratio | "
        + " | ".join(f"{s} (ms/img)" for s in STAGES)
        + " | peak memory (MiB) | main / workers (MiB) |\n|"
        + "---|" * (8 + len(STAGES))
    )
    rows = []
    for r in results:
        kind = "512² uncompressed" if r["size"] <= 512 else f"{r['size']}² JPEG 2000"
        stages = " | ".join(f"{r['stage_ms_per_image'][s]:.1f}" for s in STAGES)
        rows.append(
            f"| {kind} | {r['count']} | {r['end_to_end']:.2f} | "
            f"{'-' if r['naive_loop'] is None else format(r['naive_loop'], '.2f')} | "
            f"{r['forward_only']:.1f} | "
            f"{r['ratio']:.2f} | {stages} | {r['peak_pss_mib']:.0f} | "
            f"{r['peak_main_mib']:.0f} / {r['peak_workers_mib']:.0f} |"
        )
    return "\n".join([head, *rows])


if __name__ == "__main__":
    main()
