"""The DICOM node against real third-party peers (dcmtk's storescu, storescp, echoscu)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.dicom_node import Destination, Node, NodeConfig
from pipeline.dicom_node.config import ConfigError, load_config, parse_config

DCMTK = all(shutil.which(tool) for tool in ("storescp", "storescu", "echoscu"))
needs_dcmtk = pytest.mark.skipif(
    not DCMTK and not os.environ.get("CI"), reason="dcmtk not installed (make test-deps)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model():
    from pipeline.inference.model import BundleModel

    return BundleModel(device="cpu")


@pytest.fixture()
def pacs(tmp_path):
    """dcmtk storescp as the destination PACS; yields (Destination, its output folder)."""
    port, out = free_port(), tmp_path / "pacs"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(out), "+xa", str(port)])
    time.sleep(0.5)
    yield Destination("PACS", "127.0.0.1", port), out
    proc.terminate()
    proc.wait(10)


@pytest.fixture()
def study(radiograph_folder) -> dict[str, Path]:
    root = radiograph_folder["root"]
    return {
        "mono1": root / "dicom/a/mono1.dcm",
        "j2k": root / "dicom/j2k.dcm",
        "rle": root / "dicom/rle.dcm",
        "lateral": root / "junk/lateral.dcm",
        "sr": root / "junk/sr.dcm",
    }


def storescu(port: int, files, aet: str = "MODALITY", syntax: str = "-xv"):
    """dcmtk storescu; ``syntax`` picks the compressed transfer syntax proposed besides the
    uncompressed ones (-xv JPEG 2000 lossless, -xr RLE), as a modality configured for it."""
    cmd = [
        "storescu",
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
    )
    node = Node(config, model, poll_seconds=0.2)
    node.start()
    try:
        echo = subprocess.run(
            ["echoscu", "-aet", "MODALITY", "-aec", "LUNGSEG", "127.0.0.1", str(port)],
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
    segs = [hd.seg.segread(p) for p in sorted(pacs_dir.iterdir())]
    referenced = {
        s.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        for s in segs
    }
    assert len(segs) == 3 and referenced == frontal
    assert all(s.SegmentSequence[0].SegmentLabel == "Right lung" for s in segs)
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
