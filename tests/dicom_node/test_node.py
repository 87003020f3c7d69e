"""The DICOM node against real third-party peers (dcmtk's storescu, storescp, echoscu)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.dicom_node import Destination, Node, NodeConfig
from pipeline.dicom_node.config import ConfigError, load_config, parse_config
from tests.conftest import dcmtk, free_port

DCMTK = all(dcmtk(tool) for tool in ("storescp", "storescu", "echoscu"))
needs_dcmtk = pytest.mark.skipif(
    not DCMTK and not os.environ.get("CI"), reason="dcmtk not installed (make test-deps)"
)


@pytest.fixture()
def pacs(tmp_path):
    """dcmtk storescp as the destination PACS; yields (Destination, its output folder)."""
    port, out = free_port(), tmp_path / "pacs"
    out.mkdir()
    proc = subprocess.Popen([dcmtk("storescp"), "-aet", "PACS", "-od", str(out), "+xa", str(port)])
    time.sleep(0.5)
    yield Destination("PACS", "127.0.0.1", port), out
    proc.terminate()
    proc.wait(10)


def storescu(port: int, files, aet: str = "MODALITY", syntax: str = "-xv"):
    """dcmtk storescu; ``syntax`` picks the compressed transfer syntax proposed besides the
    uncompressed ones (-xv JPEG 2000 lossless, -xr RLE), as a modality configured for it."""
    cmd = [
        dcmtk("storescu"),
        syntax,
        "-aet",
        aet,
        "-aec",
        "LUNGSEG",
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@needs_dcmtk
def test_node_segments_a_study_sent_by_storescu_and_delivers_seg_to_storescp(
    tmp_path, model, pacs, study
):
    import highdicom as hd
    import pydicom

    dest, pacs_dir = pacs
    port = free_port()
    config = NodeConfig(
        port=port,
        spool_dir=tmp_path / "spool",
        idle_seconds=1.0,
        destinations=(dest,),
        allowed_calling_aets=("MODALITY",),
        sr=True,
    )
    node = Node(config, model, poll_seconds=0.2)
    node.start()
    try:
        echo = subprocess.run(
            [dcmtk("echoscu"), "-aet", "MODALITY", "-aec", "LUNGSEG", "127.0.0.1", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert echo.returncode == 0, echo.stderr
        first = [study[k] for k in ("mono1", "j2k", "lateral", "sr")]
        for files, syntax in ((first, "-xv"), ([study["rle"]], "-xr")):
            sent = storescu(port, files, syntax=syntax)
            assert sent.returncode == 0, sent.stderr
        assert node.wait_idle(180)
        refused = storescu(port, [study["mono1"]], aet="INTRUDER")
        assert refused.returncode != 0 and "reject" in (refused.stdout + refused.stderr).lower()
    finally:
        node.stop()
    frontal = {pydicom.dcmread(study[k]).SOPInstanceUID for k in ("mono1", "j2k", "rle")}
    received = [pydicom.dcmread(p) for p in sorted(pacs_dir.iterdir())]
    segs = [hd.seg.Segmentation.from_dataset(d) for d in received if d.Modality == "SEG"]
    reports = [d for d in received if d.Modality == "SR"]
    referenced = {
        s.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        for s in segs
    }
    assert len(segs) == 3 and referenced == frontal
    # the same UIDs lungseg segment gives the SEG of that source with that model
    from pipeline.inference.outputs import seg_uids

    checksum = model.identity.digest
    mono1 = pydicom.dcmread(study["mono1"], stop_before_pixels=True)
    expected = seg_uids(mono1.SeriesInstanceUID, mono1.SOPInstanceUID, checksum)
    assert expected["sop_instance_uid"] in {s.SOPInstanceUID for s in segs}
    assert all(s.SegmentSequence[0].SegmentLabel == "Right lung" for s in segs)
    # a TID 1500 report per image with a pixel spacing (the RLE file has none)
    assert len(reports) == 2
    if shutil.which("dciodvfy"):  # CI installs it (make test-deps)
        for path in pacs_dir.iterdir():
            proc = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
            lines = (proc.stdout + proc.stderr).splitlines()
            problems = [x for x in lines if x.startswith(("Error", "Warning"))]
            assert not problems, f"{path}: {problems}"
    for report in reports:
        areas = _areas(report)
        assert areas["Right lung"] + areas["Left lung"] == pytest.approx(
            areas["Both lungs"], abs=0.02
        )
        # the SEG's lung pixels times the 0.35 mm x 0.35 mm pixel area (BINARY: 0/1 frames)
        assert any(
            abs(areas["Both lungs"] - 0.35**2 * int(s.pixel_array.sum())) < 0.05 for s in segs
        ), areas
    audit = node.spool.read_audit()
    skipped = {e["sop"]: e["reason"] for e in audit if e["event"] == "skipped"}
    lateral = pydicom.dcmread(study["lateral"]).SOPInstanceUID
    sr = pydicom.dcmread(study["sr"]).SOPInstanceUID
    assert "ViewPosition 'LL'" in skipped[lateral] and "Modality 'SR'" in skipped[sr]
    assert sum(e["event"] == "delivered" for e in audit) == 3
    assert not any("PatientName" in str(e) for e in audit)
    assert not list((tmp_path / "spool" / "incoming").glob("*/*/*.dcm"))  # nothing left behind


def test_config_keys_and_errors(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text(
        "ae_title: LUNGSEG\nhost: 127.0.0.1\nport: 11112\nspool_dir: ./spool\nidle_seconds: 5\n"
        "destinations:\n  - {ae_title: PACS, host: 127.0.0.1, port: 11113}\n"
    )
    config = load_config(path)
    assert config.destinations == (Destination("PACS", "127.0.0.1", 11113),)
    assert config.spool_dir == tmp_path / "spool" and config.idle_seconds == 5.0
    with pytest.raises(ConfigError, match=r"unknown keys \['colour'\]"):
        parse_config({"colour": 1, "output_dir": "x"})
    with pytest.raises(ConfigError, match="port 70000"):
        parse_config({"port": 70000, "output_dir": "x"})
    with pytest.raises(ConfigError, match="AE title 'MUCH_TOO_LONG_TITLE'"):
        parse_config({"ae_title": "MUCH_TOO_LONG_TITLE", "output_dir": "x"})
    with pytest.raises(ConfigError, match="results need a place to go"):
        parse_config({"port": 104})


def _wait_for(predicate, timeout: float = 120.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def _events(spool: Path, event: str) -> list[dict]:
    from pipeline.dicom_node.spool import Spool

    return [e for e in Spool(spool).read_audit() if e["event"] == event]


@needs_dcmtk
@pytest.mark.slow
def test_killed_node_delivers_every_result_exactly_once_after_restart(tmp_path, study):
    import sys

    import highdicom as hd

    node_port, pacs_port = free_port(), free_port()
    spool, pacs_dir = tmp_path / "spool", tmp_path / "pacs"
    pacs_dir.mkdir()
    config = tmp_path / "node.yaml"
    config.write_text(
        f"ae_title: LUNGSEG\nport: {node_port}\nspool_dir: {spool}\nidle_seconds: 1\n"
        f"retry_seconds: 0.5\ndevice: cpu\n"
        f"destinations:\n  - {{ae_title: PACS, host: 127.0.0.1, port: {pacs_port}}}\n"
    )
    cmd = [sys.executable, "-m", "pipeline.cli", "node", "--config", str(config)]

    def start_node() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert _wait_for(
            lambda: (
                subprocess.run(
                    [dcmtk("echoscu"), "-aec", "LUNGSEG", "127.0.0.1", str(node_port)],
                    capture_output=True,
                ).returncode
                == 0
            ),
            60,
        ), "node did not start"
        return proc

    node = start_node()
    first = [study[k] for k in ("mono1", "j2k", "lateral", "sr")]
    assert storescu(node_port, first, syntax="-xv").returncode == 0  # acknowledged
    # the PACS is down: results are made but cannot be sent; kill the node meanwhile
    assert _wait_for(lambda: len(_events(spool, "segmented")) == 2)
    assert _wait_for(lambda: len({e["sop"] for e in _events(spool, "send_failed")}) == 2)
    node.kill()
    node.wait(10)
    assert not _events(spool, "sent")
    pacs = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "PACS", "-od", str(pacs_dir), "+xa", str(pacs_port)]
    )
    try:
        node = start_node()
        try:
            assert _wait_for(lambda: len(_events(spool, "delivered")) == 2)
        finally:
            node.terminate()
            node.wait(10)
    finally:
        pacs.terminate()
        pacs.wait(10)
    assert len(_events(spool, "sent")) == 2  # each result sent once, after the restart
    segs = [hd.seg.segread(p) for p in pacs_dir.iterdir()]
    assert len(segs) == 2 and len({s.SOPInstanceUID for s in segs}) == 2
    assert len(_events(spool, "segmented")) == 2  # nothing segmented twice


@needs_dcmtk
def test_check_validates_the_config_and_reaches_the_destination(tmp_path, pacs, capsys):
    from pipeline.cli import main

    dest, _ = pacs
    config = tmp_path / "node.yaml"
    body = "device: cpu\ndestinations:\n  - {ae_title: PACS, host: 127.0.0.1, port: %d}\n"
    config.write_text(body % dest.port)
    assert main(["node", "--config", str(config), "--check"]) == 0
    assert "C-ECHO ok" in capsys.readouterr().out
    config.write_text(body % free_port())  # nobody listens there
    assert main(["node", "--config", str(config), "--check"]) == 1
    assert "no association with PACS" in capsys.readouterr().out
    config.write_text("port: 0\n")
    assert main(["node", "--config", str(config), "--check"]) == 2
    assert "port 0 must be an integer" in capsys.readouterr().err


@needs_dcmtk
def test_concurrent_associations_are_all_acknowledged_and_delivered(
    tmp_path, model, pacs, data_dir
):
    from pipeline.io.convert import build_dicom, write_dicom
    from tests.conftest import CASES, load_png

    dest, pacs_dir = pacs
    files = [
        write_dicom(
            build_dicom(load_png(data_dir / "images" / CASES[i % len(CASES)]), name=f"load-{i}"),
            tmp_path / "in" / f"{i}.dcm",
        )
        for i in range(20)
    ]
    port = free_port()
    config = NodeConfig(
        port=port,
        spool_dir=tmp_path / "spool",
        idle_seconds=1.0,
        destinations=(dest,),
        output_dir=tmp_path / "results",
    )
    node = Node(config, model, poll_seconds=0.2)
    node.start()
    try:
        senders = [
            subprocess.Popen(
                [dcmtk("storescu"), "-aec", "LUNGSEG", "127.0.0.1", str(port)]
                + [str(f) for f in files[i::4]],
                stderr=subprocess.PIPE,
            )
            for i in range(4)
        ]
        assert [s.wait(120) for s in senders] == [0, 0, 0, 0]
        assert node.wait_idle(180)
    finally:
        node.stop()
    audit = node.spool.read_audit()
    assert sum(e["event"] == "received" for e in audit) == 20
    assert sum(e["event"] == "delivered" for e in audit) == 20
    assert len(list(pacs_dir.iterdir())) == 20
    assert len(list((tmp_path / "results").glob("*/seg.dcm"))) == 20


def _areas(report) -> dict[str, float]:
    """Area (mm²) of each measurement group of a TID 1500 report, by tracking identifier."""
    out = {}

    def walk(items, label=None):
        for item in items:
            if item.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier":
                label = item.TextValue
        for item in items:
            if getattr(item, "ValueType", "") == "NUM":
                out[label] = float(item.MeasuredValueSequence[0].NumericValue)
            if "ContentSequence" in item:
                walk(item.ContentSequence, label)

    walk(report.ContentSequence)
    return out


@needs_dcmtk
def test_results_are_stored_by_stow_rs(tmp_path, model, study):
    """A minimal DICOMweb service on loopback records what STOW-RS posts."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import pydicom

    posts: list[tuple[str, str, bytes]] = []

    class Stow(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            posts.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Stow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    url = f"http://127.0.0.1:{server.server_address[1]}/dicomweb"
    config = parse_config(
        {
            "port": port,
            "spool_dir": str(tmp_path / "spool"),
            "idle_seconds": 1,
            "dicomweb": {"url": url},
        }
    )
    node = Node(config, model, poll_seconds=0.2)
    node.start()
    try:
        assert storescu(port, [study["mono1"]]).returncode == 0
        assert node.wait_idle(120)
    finally:
        node.stop()
        server.shutdown()
    (path, content_type, body) = posts[0]
    assert path == "/dicomweb/studies" and content_type.startswith("multipart/related")
    source = pydicom.dcmread(study["mono1"]).SOPInstanceUID
    assert source.encode() in body  # the SEG references its source
    assert [e["destination"] for e in node.spool.read_audit() if e["event"] == "sent"] == [
        "dicomweb"
    ]
    with pytest.raises(ConfigError, match="must be"):
        parse_config({"dicomweb": {"url": "ftp://x"}})


def test_processed_series_folders_are_removed_only_when_empty(tmp_path):
    from pipeline.dicom_node.spool import Spool

    spool = Spool(tmp_path / "spool")
    path = spool.store("1.2.3", "1.2.3.4", "1.2.3.4.5", b"DICM")
    series = path.parent
    (series / ".released").touch()
    in_flight = series / ".1.2.3.4.6.dcm.99.1.tmp"  # an instance being stored right now
    in_flight.write_bytes(b"partial")
    path.unlink()  # the processed instance
    spool.forget_if_empty(series)
    assert in_flight.read_bytes() == b"partial"  # nothing but empty folders is ever removed
    in_flight.unlink()
    spool.forget_if_empty(series)
    assert not series.exists() and not series.parent.exists()
    # a store into a series whose folder was just removed recreates it
    assert spool.store("1.2.3", "1.2.3.4", "1.2.3.4.7", b"DICM").read_bytes() == b"DICM"
