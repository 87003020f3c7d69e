"""``lungseg segment``'s CPU side with the network free: what a GPU job can get from the CPUs.

On a GPU the forward pass takes about a millisecond per batch, so the job's own process
(batching, sending images to the workers and back, journalling) and the workers (decoding,
post-processing, writing) are the whole cost. This script runs the job on the CPU with the
network's forward pass replaced by a copy of the first batch's real logits (the network
runs once), so everything else runs as it would beside a GPU, on real outputs. Per input
it reports (whole processes, in one run):

- the job's rate with the network free, and the network's own rate (forward only, CPU);
- the CPU the job's process spends per image after its first batch: one job process cannot
  go faster than ``1000 / that`` images per second, however fast its GPU;
- the workers' CPU per image: how many workers (cores) one GPU needs to be kept busy at
  that ceiling.

    .venv/bin/python benchmarks/network_free.py [--inputs 512 2048-j2k] [--count 500]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_throughput import (
    INPUTS,
    build_folder,
    forward_only,
    parse_or_run_child,
    segment_with,
)


def child(folder: str, out: str, workers: str) -> None:
    """Run the job with a free network; print its figures as JSON.

    The stand-in goes in after ``lungseg segment``'s own start-up (``segment_with``), so
    the process is the one a user runs.
    """
    marks: dict[str, float] = {}
    argv = [folder, "-o", out, "--no-progress", "--workers", workers]
    code = segment_with(lambda: _stand_in(marks), argv)
    summary = json.loads((Path(out) / "summary.json").read_text())
    processed = summary["this_run"]["processed"]
    print(
        json.dumps(
            {
                "code": code,
                "images_per_second": summary["this_run"]["images_per_second"],
                "main_ms": 1000 * (marks["end"] - marks["start"]) / (processed - marks["first"]),
                "workers_ms": 1000 * _cpu(resource.RUSAGE_CHILDREN) / processed,
                "workers": summary["resources"]["workers"],
            }
        )
    )


def _stand_in(marks: dict[str, float]) -> None:
    """Replace the forward pass by the first batch's logits; note the job's CPU in ``marks``."""
    import torch

    import pipeline.inference.segment as seg

    real_forward, real_run, cached = seg.Predictor.forward, seg.Segmenter.run, []

    def forward(self, images):  # the first batch's real logits, copied for every batch
        if not cached:  # the job's process CPU counted from the end of this on (no start-up)
            cached.append(real_forward(self, images))
            marks["start"], marks["first"] = _cpu(resource.RUSAGE_SELF), len(images)
        logits = cached[0]
        if len(images) > len(logits):
            logits = torch.cat([logits] * -(-len(images) // len(logits)))
        return logits[: len(images)].clone()  # one copy, as a GPU's logits are copied back

    def run(self, jobs):
        done = real_run(self, jobs)
        marks["end"] = _cpu(resource.RUSAGE_SELF)
        return done

    seg.Predictor.forward, seg.Segmenter.run = forward, run


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def measure(name: str, args: argparse.Namespace) -> dict:
    """One input: the job with a free network (a child process) and the network alone."""
    folder = build_folder(name, args.count, args.distinct, args.work)
    with tempfile.TemporaryDirectory(dir=args.work) as out:
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(folder), out, args.workers],
            capture_output=True,
            text=True,
            check=True,
        )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    forward = forward_only(folder, argparse.Namespace(device="cpu", precision=None, batch_size=8))
    return {"input": name, "count": args.count, "forward_only": forward, **figures}


def table(results: list[dict]) -> str:
    """The results as a Markdown table."""
    head = (
        "| input | N | workers | network free (img/s) | forward only, CPU (img/s) | "
        "job's process, CPU (ms/img) | one job's ceiling (img/s) | workers, CPU (ms/img) | "
        "workers to keep up with it |\n|" + "---|" * 9
    )
    rows = [
        f"| {INPUTS[r['input']][3]} | {r['count']} | {r['workers']} | "
        f"{r['images_per_second']:.1f} | {r['forward_only']:.1f} | {r['main_ms']:.2f} | "
        f"{1000 / r['main_ms']:.0f} | {r['workers_ms']:.1f} | "
        f"{r['workers_ms'] / r['main_ms']:.1f} |"
        for r in results
    ]
    return "\n".join([head, *rows])


def main() -> None:
    """Measure each input, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", nargs="+", default=["512", "2048-j2k"], choices=list(INPUTS))
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--distinct", type=int, default=100)
    parser.add_argument("--workers", default="auto")
    args = parse_or_run_child(parser, child)
    if args is None:
        return
    results = []
    for name in args.inputs:
        results.append(measure(name, args))
        print(json.dumps(results[-1]), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
