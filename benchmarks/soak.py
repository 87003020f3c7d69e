"""Fault injection at scale: kill ``lungseg segment`` again and again; load the web viewer.

``segment``: an uninterrupted run over N DICOM files (workers on) is the reference. Then a
second output folder is filled by runs that are SIGKILLed at random moments (the journal
decides how far each got) and rerun, K times, then run to the end. Checked: the final masks,
overlays and SEG objects equal the reference (SEG dates aside: each OUT carries its own run's
date), every input is in the report exactly once, no temporary file is left, every journal
line is whole after each rerun, and no process of a killed run is still alive.

``node``: ``lungseg node`` receives I instances from 4 concurrent ``storescu`` and sends SEG
and SR to a loopback PACS (pynetdicom, its own process) that takes SEG but refuses the SR
class and aborts every 25th association's C-STORE before storing; meanwhile the node is
SIGKILLed 3 times (and restarted) and the PACS is down for 30 s. Checked, counted at the PACS:
every SEG stored (duplicates counted: a kill between a store and its bookkeeping may resend
one file), every SR refused and audited once, the outbox empty, no instance lost.

``serve``: ``lungseg serve`` in a child process gets U uploads from C concurrent clients, 10%
junk (text, truncated DICOM) and 3 oversized; checked: no 5xx, the expected 4xx for the bad
ones, peak memory (PSS), and that its private temporary folder is empty afterwards.

    .venv/bin/python benchmarks/soak.py [--files 300] [--kills 20] [--instances 200]
                                        [--uploads 100] [--clients 8] [--only segment|node|serve]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
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
from tests.conftest import child_pids, is_running  # noqa: E402

LUNGSEG = [sys.executable, "-m", "pipeline.cli"]


def _segment(folder: Path, out: Path) -> subprocess.Popen:
    cmd = [*LUNGSEG, "segment", str(folder), "-o", str(out), "--workers", "2", "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _journal_whole(out: Path) -> bool:
    lines = (out / "journal.jsonl").read_text().splitlines()
    try:
        [json.loads(line) for line in lines]
    except json.JSONDecodeError:
        return False
    return True


def _seg_key(path: Path) -> tuple:
    import pydicom

    ds = pydicom.dcmread(path)
    dims = ds.DimensionOrganizationSequence[0].DimensionOrganizationUID
    return ds.SOPInstanceUID, ds.SeriesInstanceUID, dims, ds.PixelData


def _digests(out: Path) -> dict[str, object]:
    import hashlib

    found: dict[str, object] = {}
    for fmt in ("masks", "overlays"):
        for p in sorted((out / fmt).rglob("*.png")):
            found[str(p.relative_to(out))] = hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted((out / "seg").rglob("*.dcm")):
        found[str(p.relative_to(out))] = _seg_key(p)
    return found


def soak_segment(folder: Path, work: Path, kills: int, seed: int) -> dict:
    """The kill-and-rerun loop; returns the figures and the checks."""
    rng = random.Random(seed)
    ref = work / "reference"
    start = time.perf_counter()
    assert _segment(folder, ref).wait() in (0, 1)
    reference_seconds = time.perf_counter() - start
    out, killed, whole, orphans, finished_early = work / "killed", 0, True, [], 0
    while killed < kills:
        proc = _segment(folder, out)
        time.sleep(rng.uniform(1.0, max(1.5, 0.5 * reference_seconds)))
        if proc.poll() is not None:  # done before the kill: start again from a fresh folder
            finished_early += 1
            subprocess.run(["rm", "-rf", str(out)], check=True)
            continue
        workers = child_pids(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed += 1
        deadline = time.time() + 10
        while time.time() < deadline and any(is_running(w) for w in workers):
            time.sleep(0.1)
        orphans += [w for w in workers if is_running(w)]
    final = _segment(folder, out)
    final.wait()
    whole = _journal_whole(out)
    report = [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]
    paths = [r["path"] for r in report]
    return {
        "files": len(list(folder.rglob("*.dcm"))),
        "kills": killed,
        "runs_finished_before_their_kill": finished_early,
        "reference_seconds": round(reference_seconds, 1),
        "outputs_identical": _digests(out) == _digests(ref),
        "report_rows": len(paths),
        "each_input_once": len(paths) == len(set(paths)) == len(report),
        "temporaries_left": len(list(out.rglob("*.tmp*"))),
        "journal_whole": whole,
        "orphans": orphans,
    }


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "lungsegsoakboundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode(), boundary


def _post(url: str, data: bytes) -> int:
    """POST one upload the way browsers and curl do: read an early answer (413) too.

    Returns the HTTP status, or -1 when the connection closed without any answer.
    """
    import http.client
    import urllib.parse

    body, boundary = _multipart(data)
    where = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=300)
    try:
        conn.putrequest("POST", where.path)
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        try:
            for i in range(0, len(body), 1 << 16):
                conn.send(body[i : i + (1 << 16)])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before reading it all (413): read that answer
        try:
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except (ConnectionResetError, http.client.RemoteDisconnected):
            return -1
    finally:
        conn.close()


def soak_serve(folder: Path, work: Path, uploads: int, clients: int, seed: int) -> dict:
    """The viewer under concurrent uploads with junk and oversized files."""
    rng = random.Random(seed)
    files = sorted(folder.rglob("*.dcm"))
    good = [p.read_bytes() for p in files[:20]]
    truncated = good[0][: len(good[0]) // 2]
    bodies: list[tuple[str, bytes]] = [("ok", good[i % len(good)]) for i in range(uploads)]
    for i in rng.sample(range(uploads), uploads // 10):
        bodies[i] = ("junk", b"not an image at all\n" * 50 if i % 2 else truncated)
    for i in rng.sample([i for i, b in enumerate(bodies) if b[0] == "ok"], 3):
        bodies[i] = ("oversized", b"\0" * (9 * 2**20))
    tmp = work / "server-tmp"
    tmp.mkdir()
    port = free_port()
    log = work / "serve.log"
    cmd = [*LUNGSEG, "serve", "--port", str(port), "--device", "cpu", "--max-upload-mb", "8"]
    env = {**os.environ, "TMPDIR": str(tmp)}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=2).read()
                break
            except OSError:
                time.sleep(0.2)
        peak, stop = [0], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _tree_pss_kib(proc.pid)[0])
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            codes = list(pool.map(lambda b: _post(base + "/api/segment", b[1]), bodies))
        seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    by_kind: dict[str, dict[int, int]] = {}
    for (kind, _), code in zip(bodies, codes, strict=True):
        by_kind.setdefault(kind, {}).setdefault(code, 0)
        by_kind[kind][code] += 1
    return {
        "uploads": uploads,
        "clients": clients,
        "seconds": round(seconds, 1),
        "status_by_kind": {k: {str(c): n for c, n in v.items()} for k, v in by_kind.items()},
        "server_errors": sum(1 for c in codes if c >= 500),
        "peak_pss_mib": round(peak[0] / 1024),
        "temporary_entries_left": len(list(tmp.iterdir())),
    }


PACS_SCRIPT = """
import sys
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
port, log = int(sys.argv[1]), sys.argv[2]
calls = [0]
def store(event):
    calls[0] += 1
    if calls[0] % 25 == 0:
        event.assoc.abort()
        return 0xA700
    with open(log, "a") as fh:
        fh.write(str(event.dataset.SOPInstanceUID) + "\\n")
    return 0x0000
ae = AE(ae_title="PACS")
ae.add_supported_context("1.2.840.10008.5.1.4.1.1.66.4", ALL_TRANSFER_SYNTAXES)
ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, store)])
"""


def _audit(spool: Path) -> list[dict]:
    path = spool / "audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def soak_node(work: Path, instances: int, seed: int) -> dict:
    """The node under load with a refusing, aborting, absent PACS and three kills."""
    from collections import Counter

    from benchmarks.node_load import build

    rng = random.Random(seed)
    files = build(instances, work / "node-in")
    node_port, pacs_port = free_port(), free_port()
    spool, stored = work / "node-spool", work / "pacs-stored.txt"
    (work / "pacs.py").write_text(PACS_SCRIPT)
    config = work / "node.yaml"
    config.write_text(
        f"ae_title: LUNGSEG\nport: {node_port}\nspool_dir: {spool}\nidle_seconds: 1\n"
        f"sr: true\nretries: 30\nretry_seconds: 1\n"
        f"destinations:\n  - {{ae_title: PACS, host: 127.0.0.1, port: {pacs_port}}}\n"
    )

    def start_pacs() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(work / "pacs.py"), str(pacs_port), str(stored)]
        )

    def start_node() -> subprocess.Popen:
        cmd = [*LUNGSEG, "node", "--config", str(config)]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    pacs, node = start_pacs(), start_node()
    while subprocess.run(
        ["echoscu", "-aec", "LUNGSEG", "127.0.0.1", str(node_port)], capture_output=True
    ).returncode:
        time.sleep(0.5)
    start = time.perf_counter()
    senders = [
        subprocess.Popen(
            ["storescu", "-aec", "LUNGSEG", "127.0.0.1", str(node_port), *map(str, files[i::4])],
            stderr=subprocess.DEVNULL,
        )
        for i in range(4)
    ]
    send_codes = [s.wait() for s in senders]
    for kill in range(3):
        time.sleep(rng.uniform(3, 10))
        node.send_signal(signal.SIGKILL)
        node.wait()
        if kill == 1:  # the PACS goes down for 30 s while the node restarts
            pacs.terminate()
            pacs.wait()
            node = start_node()
            time.sleep(30)
            pacs = start_pacs()
        else:
            node = start_node()
    deadline = time.time() + 900
    while time.time() < deadline:
        pending = [p for p in (spool / "outbox").iterdir() if not p.name.startswith(".")]
        if (
            not pending
            and len({e["sop"] for e in _audit(spool) if e["event"] == "delivered"}) >= instances
        ):
            break
        time.sleep(1)
    seconds = time.perf_counter() - start
    node.terminate()
    node.wait(30)
    pacs.terminate()
    pacs.wait()
    audit = _audit(spool)
    at_pacs = Counter(stored.read_text().split()) if stored.exists() else Counter()
    refused = Counter(e["sop"] for e in audit if e["event"] == "refused")
    return {
        "instances": instances,
        "storescu_exit_codes": send_codes,
        "seconds": round(seconds, 1),
        "seg_stored_at_pacs": len(at_pacs),
        "seg_duplicates_at_pacs": sum(n - 1 for n in at_pacs.values()),
        "sr_refused_audited": len(refused),
        "sr_refused_more_than_once": sum(1 for n in refused.values() if n > 1),
        "delivered_audited": len({e["sop"] for e in audit if e["event"] == "delivered"}),
        "send_failed_events": sum(e["event"] == "send_failed" for e in audit),
        "outbox_left": len([p for p in (spool / "outbox").iterdir() if not p.name.startswith(".")]),
        "failed_inputs": len(list((spool / "failed").glob("*.json"))),
    }


def main() -> None:
    """Run both soaks; print and save the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("segment", "node", "serve"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lungseg-soak-") as tmp:
        work = Path(tmp)
        folder = build_folder("512", args.files, min(100, args.files), work)
        results = {}
        if args.only in (None, "segment"):
            results["segment"] = soak_segment(folder, work, args.kills, args.seed)
        if args.only in (None, "node"):
            results["node"] = soak_node(work, args.instances, args.seed)
        if args.only in (None, "serve"):
            results["serve"] = soak_serve(folder, work, args.uploads, args.clients, args.seed)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
