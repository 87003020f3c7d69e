"""Worker-pool replacements of ``lungseg segment`` as they happen on CUDA, measured on the CPU.

The batch job replaces its pool of workers every ``RECYCLE_EVERY`` images per worker (large
images; this script counts its 512² images fully too, as they were before). Once
the network is on a GPU, CUDA is initialised and the job's process may no longer be forked,
so later pools come from elsewhere: ``forkserver`` (what the job does: a fork server started
with the run, its imports preloaded) or ``spawn`` (what it did before: a fresh interpreter
per worker, importing torch, MONAI and the bundle each time). This script runs the job on
the CPU with CUDA reported as initialised once the network loads, so every pool after the
first comes from the chosen start method, exactly as on a GPU machine, and ``fork`` (the
CPU job as it is) as the reference. Modes alternate in one run; each run is a whole process.
Reported per mode (medians): the whole process, the first forward pass, and the network's
idle time in gaps over 0.5 s (the stalls: waiting for a new pool's first images).

    .venv/bin/python benchmarks/pool_replacement.py [--count 600] [--repeats 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_throughput import build_folder, parse_or_run_child, segment_with

MODES = ("fork", "forkserver", "spawn")


def child(mode: str, folder: str, out: str) -> None:
    """Run ``lungseg segment`` with pools after the network's loading started by ``mode``.

    The stand-ins go in after ``lungseg segment``'s own start-up (``segment_with``), so the
    process is the one a user runs.
    """
    started, forwards = time.perf_counter(), []
    argv = [folder, "-o", out, "--no-progress", "--formats", "seg,mask,overlay"]
    code = segment_with(lambda: _as_on_cuda(mode, started, forwards), argv)
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(forwards)]
    print(
        json.dumps(
            {
                "code": code,
                "first_forward_s": forwards[0][0],
                "stalls_s": sum(g for g in gaps if g > 0.5),
            }
        )
    )


def _as_on_cuda(mode: str, started: float, forwards: list) -> None:
    """CUDA reported initialised once the network loads; pools then started by ``mode``."""
    import torch

    import pipeline.inference.segment as seg

    loaded = []
    real_load, real_forward = seg.Predictor.load_network, seg.Predictor.forward

    def load_network(self):  # "CUDA initialised" from here on
        loaded.append(True)
        return real_load(self)

    def forward(self, images):
        begin = time.perf_counter()
        result = real_forward(self, images)
        forwards.append((begin - started, time.perf_counter() - started))
        return result

    seg.Predictor.load_network, seg.Predictor.forward = load_network, forward
    seg.RECYCLE_PIXELS = 512 * 512  # a pool every RECYCLE_EVERY images per worker, as at 2048²
    if mode != "fork":
        torch.cuda.is_initialized = lambda: bool(loaded)
        seg.start_method = lambda cuda: mode if cuda else "fork"
    if mode == "forkserver":  # as Segmenter.run does when the device is CUDA
        real_run = seg.Segmenter.run
        seg.Segmenter.run = lambda self, jobs: (seg.start_forkserver(), real_run(self, jobs))[1]


def run(mode: str, folder: Path, work: Path) -> dict:
    """One whole process in ``mode``; its figures."""
    out = Path(tempfile.mkdtemp(dir=work))
    begin = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(folder), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**figures, "whole_s": time.perf_counter() - begin}


def main() -> None:
    """Alternate the modes, print a Markdown table of medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=2)
    args = parse_or_run_child(parser, child)
    if args is None:
        return
    folder = build_folder("512", args.count, 100, args.work)
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for _ in range(args.repeats):
            for mode in MODES:
                runs[mode].append(run(mode, folder, Path(tmp)))
                print(mode, json.dumps(runs[mode][-1]), flush=True)
    print(f"\n512², N = {args.count}, {args.repeats} runs each, medians (whole process in s)\n")
    print("| pools after the network loads | whole process | first forward | stalls > 0.5 s |")
    print("|---|---|---|---|")
    for mode in MODES:
        med = {k: statistics.median(r[k] for r in runs[mode]) for k in runs[mode][0]}
        label = "fork (the CPU job)" if mode == "fork" else mode
        print(
            f"| {label} | {med['whole_s']:.2f} | {med['first_forward_s']:.2f} | "
            f"{med['stalls_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
