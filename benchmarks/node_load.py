"""DICOM node load test on loopback: N instances from C concurrent storescu associations.

Builds N distinct DICOM radiographs (8-bit, 512²) from the shared images, starts dcmtk's
storescp as the destination PACS and ``lungseg node`` in a child process, sends the files
with C concurrent ``storescu`` processes, and waits until every result is delivered. Reports
instances/s received (first send to last acknowledgement), instances/s end to end (first
send to last SEG delivered), and the node's peak memory (PSS of its process tree).

    .venv/bin/python benchmarks/node_load.py [--count 200] [--senders 4]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.segment_throughput import _tree_pss_kib  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(count: int, folder: Path) -> list[Path]:
    """``count`` DICOM files with distinct UIDs, cycling over the shared images."""
    from PIL import Image

    from pipeline.io.convert import DicomVariant, build_dicom, write_dicom
    from pipeline.io.datasets import default_data_dir, list_cases

    cases = list_cases(default_data_dir())
    files = []
    for i in range(count):
        case = cases[i % len(cases)]
        with Image.open(case.image) as img:
            pixels = __import__("numpy").asarray(img.convert("L"))
        ds = build_dicom(pixels, DicomVariant.MONO2_8BIT, name=f"load-{i}", spacing_mm=0.7)
        files.append(write_dicom(ds, folder / f"{i:04d}.dcm"))
    return files


def events(spool: Path, event: str) -> int:
    path = spool / "audit.jsonl"
    if not path.exists():
        return 0
    return sum(json.loads(line)["event"] == event for line in path.read_text().splitlines())


def main() -> None:
    """Run the load test and print the figures as JSON and a Markdown row."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--senders", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lungseg-node-load-"))
    files = build(args.count, work / "in")
    node_port, pacs_port = free_port(), free_port()
    (work / "pacs").mkdir()
    config = work / "node.yaml"
    config.write_text(
        f"ae_title: LUNGSEG\nport: {node_port}\nspool_dir: {work / 'spool'}\nidle_seconds: 1\n"
        f"destinations:\n  - {{ae_title: PACS, host: 127.0.0.1, port: {pacs_port}}}\n"
    )
    pacs = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(work / "pacs"), str(pacs_port)])
    node = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "node", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    peak = [0]

    def sample() -> None:
        while node.poll() is None:
            own, children = _tree_pss_kib(node.pid)
            peak[0] = max(peak[0], own + children)
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    while subprocess.run(
        ["echoscu", "-aec", "LUNGSEG", "127.0.0.1", str(node_port)], capture_output=True
    ).returncode:
        time.sleep(0.5)
    chunks = [files[i :: args.senders] for i in range(args.senders)]
    start = time.perf_counter()
    senders = [
        subprocess.Popen(
            ["storescu", "-aec", "LUNGSEG", "127.0.0.1", str(node_port), *map(str, chunk)],
            stderr=subprocess.DEVNULL,
        )
        for chunk in chunks
    ]
    codes = [s.wait() for s in senders]
    received = time.perf_counter() - start
    while events(work / "spool", "delivered") < args.count and node.poll() is None:
        time.sleep(0.2)
    total = time.perf_counter() - start
    node.terminate()
    pacs.terminate()
    result = {
        "instances": args.count,
        "senders": args.senders,
        "storescu_exit_codes": codes,
        "received_per_second": args.count / received,
        "delivered": events(work / "spool", "delivered"),
        "end_to_end_per_second": args.count / total,
        "seconds": total,
        "peak_pss_mib": peak[0] / 1024,
        "seg_files_at_pacs": len(list((work / "pacs").iterdir())),
    }
    print(json.dumps(result))
    print(
        "| instances | senders | received (inst/s) | delivered | end to end (inst/s) "
        "| peak memory (MiB) |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.count} | {args.senders} | {result['received_per_second']:.1f} | "
        f"{result['delivered']} | {result['end_to_end_per_second']:.2f} | "
        f"{result['peak_pss_mib']:.0f} |"
    )


if __name__ == "__main__":
    main()
