"""The node's sender against PACS that refuse an object class, abort, or are down.

The PACS here are pynetdicom servers on loopback that count what they stored; the results
are real SEG and SR objects of held-out radiographs.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from pydicom.uid import UID

from pipeline.dicom_node.config import parse_config
from pipeline.dicom_node.processor import Sender
from pipeline.dicom_node.spool import Spool
from tests.conftest import free_port, load_png

SEG_STORAGE = UID("1.2.840.10008.5.1.4.1.1.66.4")
SR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.34")  # Comprehensive 3D SR


@pytest.fixture(scope="module")
def results(shipped_model, data_dir) -> list[tuple[str, dict[str, bytes]]]:
    """``[(source SOP UID, {"seg.dcm": ..., "sr.dcm": ...})]`` of three radiographs."""
    from pipeline.inference.outputs import encode_dicom, seg_of, sr_of
    from pipeline.io.convert import DicomVariant, build_dicom
    from pipeline.training.data import load_split

    out = []
    for case in load_split(data_dir, "test", 3):
        pixels = load_png(Path(case["image"]))
        ds = build_dicom(pixels, DicomVariant.MONO2_16BIT, name=case["name"], spacing_mm=0.35)
        m = shipped_model.predict_single_npy_array(pixels, {"pixel_spacing": (0.35, 0.35)})
        seg = seg_of(ds, m.measures, shipped_model.identity)
        sr = sr_of(ds, seg, m.measures, shipped_model.identity)
        out.append(
            (str(ds.SOPInstanceUID), {"seg.dcm": encode_dicom(seg), "sr.dcm": encode_dicom(sr)})
        )
    return out


class Pacs:
    """A storage SCP on loopback taking only ``classes``; ``abort_on`` aborts that C-STORE."""

    def __init__(self, classes, abort_on: int | None = None):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

        self.port, self.stored, self.calls, self.abort_on = free_port(), Counter(), 0, abort_on
        ae = AE(ae_title="PACS")
        for uid in classes:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        handlers = [(evt.EVT_C_STORE, self._store)]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _store(self, event) -> int:
        self.calls += 1
        if self.calls == self.abort_on:  # a crash before the object is kept
            event.assoc.abort()
            return 0xA700
        self.stored[str(event.dataset.SOPInstanceUID)] += 1
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def _sender(tmp_path: Path, port: int, results, retries: int = 3) -> tuple[Sender, Spool]:
    config = parse_config(
        {
            "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": port}],
            "retries": retries,
            "retry_seconds": 0,
            "sr": True,
        }
    )
    spool = Spool(tmp_path / "spool")
    for sop, files in results:
        spool.put_results(sop, files)
    return Sender(config, spool), spool


def _rounds(sender: Sender, n: int = 8) -> None:
    for _ in range(n):
        sender.run_once()
        time.sleep(0.05)


def _events(spool: Spool, name: str) -> list[dict]:
    return [e for e in spool.read_audit() if e["event"] == name]


def test_a_refused_class_is_reported_once_and_the_rest_delivered_once(tmp_path, results):
    pacs = Pacs([SEG_STORAGE])  # takes SEG, not SR
    try:
        sender, spool = _sender(tmp_path, pacs.port, results)
        _rounds(sender)
    finally:
        pacs.stop()
    assert len(pacs.stored) == 3 and set(pacs.stored.values()) == {1}  # each SEG exactly once
    refused = _events(spool, "refused")
    assert len(refused) == 3 and all(e["file"] == "sr.dcm" for e in refused)
    assert "no presentation context" in refused[0]["reason"]
    assert not _events(spool, "send_failed") and len(_events(spool, "delivered")) == 3
    assert not list(spool.pending_results())  # outbox empty


@pytest.mark.slow  # the sender waits out its DIMSE timeout (30 s) for the aborted C-STORE
def test_an_aborted_association_resends_only_what_was_not_stored(tmp_path, results):
    pacs = Pacs([SEG_STORAGE, SR_STORAGE], abort_on=2)
    try:
        sender, spool = _sender(tmp_path, pacs.port, results)
        _rounds(sender)
    finally:
        pacs.stop()
    assert len(pacs.stored) == 6 and set(pacs.stored.values()) == {1}
    assert len(_events(spool, "send_failed")) >= 1 and not list(spool.pending_results())


def test_a_pacs_that_is_down_gets_one_attempt_and_the_retries_then_waits(tmp_path, results):
    sender, spool = _sender(tmp_path, free_port(), results[:1], retries=2)
    _rounds(sender, 6)
    failed = _events(spool, "send_failed")
    assert [e["attempt"] for e in failed] == [1, 2, 3]  # first attempt + 2 retries
    assert failed[-1]["last_attempt"] is True and len(list(spool.pending_results())) == 1
