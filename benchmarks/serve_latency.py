"""Web viewer latency: ``lungseg serve`` in a child process, uploads over loopback HTTP.

For each input kind (512² PNG as shared; 2048² JPEG 2000 DICOM built from it) sends N uploads
one at a time (latency as a user sees it: upload, segmentation, JSON answer, then fetching the
page's image and overlay) and N uploads from C concurrent clients (throughput). Reports median
and 95th-percentile latency, uploads/s, the server's processing time and its peak memory (PSS).

    .venv/bin/python benchmarks/serve_latency.py [--count 40] [--clients 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.node_load import free_port  # noqa: E402
from benchmarks.segment_throughput import _tree_pss_kib, build_folder  # noqa: E402


def multipart(path: Path) -> tuple[bytes, str]:
    boundary = "lungsegbenchmarkboundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
    body = head.encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def upload(url: str, path: Path) -> tuple[float, float]:
    """One page visit's requests; ``(seconds end to end, server processing seconds)``."""
    body, ctype = multipart(path)
    start = time.perf_counter()
    request = urllib.request.Request(url + "/api/segment", body, {"Content-Type": ctype})
    with urllib.request.urlopen(request, timeout=300) as response:
        result = json.load(response)
    for link in ("image", "overlay"):
        with urllib.request.urlopen(url + result["links"][link], timeout=60) as response:
            response.read()
    return time.perf_counter() - start, result["seconds"]


def start_server(port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", "--port", str(port), "--device", "cpu"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
            return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not start:\n{log.read_text()[-2000:]}")


def measure(url: str, files: list[Path], clients: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        timings = list(pool.map(lambda p: upload(url, p), files))
    wall = time.perf_counter() - start
    latency = sorted(t for t, _ in timings)
    return {
        "clients": clients,
        "n": len(files),
        "p50_s": statistics.median(latency),
        "p95_s": latency[min(len(latency) - 1, round(0.95 * (len(latency) - 1)))],
        "server_s": statistics.median(s for _, s in timings),
        "uploads_per_s": len(files) / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40, help="uploads per measurement")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    args = parser.parse_args()
    from pipeline.io.datasets import default_data_dir, list_cases

    work = Path(tempfile.mkdtemp(prefix="lungseg-serve-bench-"))
    inputs = {
        "512² PNG": [c.image for c in list_cases(default_data_dir())[: args.count]],
        "2048² JPEG 2000 DICOM": sorted(
            build_folder("2048-j2k", args.count, 10, work).rglob("*.dcm")
        ),
    }
    port = free_port()
    proc, peak = start_server(port, work / "serve.log"), [0]
    sampler = threading.Thread(target=_sample, args=(proc, peak), daemon=True)
    sampler.start()
    url, rows = f"http://127.0.0.1:{port}", []
    try:
        for kind, files in inputs.items():
            upload(url, files[0])  # warm-up
            for clients in (1, args.clients):
                rows.append({"input": kind, **measure(url, files, clients)})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(table(rows, peak[0] / 1024))


def _sample(proc: subprocess.Popen, peak: list[int]) -> None:
    while proc.poll() is None:
        peak[0] = max(peak[0], sum(_tree_pss_kib(proc.pid)))
        time.sleep(0.2)


def table(rows: list[dict], peak_mib: float) -> str:
    lines = [
        "| input | clients | n | latency p50 (s) | latency p95 (s) | server (s) | uploads/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['input']} | {r['clients']} | {r['n']} | {r['p50_s']:.2f} | {r['p95_s']:.2f} "
            f"| {r['server_s']:.2f} | {r['uploads_per_s']:.2f} |"
        )
    return "\n".join(lines) + f"\n\nserver peak memory (PSS): {peak_mib:.0f} MiB"


if __name__ == "__main__":
    main()
