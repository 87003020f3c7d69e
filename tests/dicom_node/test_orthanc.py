"""The node against a real PACS: Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) on loopback.

The fixture writes a private configuration (loopback ports, storage in the test's folder,
no authentication, the DICOMweb plugin), starts ``Orthanc`` and stops it. The node delivers
SEG and SR by C-STORE and by STOW-RS; the test reads them back by QIDO-RS and WADO-RS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipeline.dicom_node import Node
from pipeline.dicom_node.config import parse_config
from tests.conftest import free_port, needs_orthanc
from tests.dicom_node.test_node import storescu

pytestmark = needs_orthanc


def _node(tmp_path, orthanc, model, **extra) -> Node:
    dest = {"ae_title": orthanc["aet"], "host": "127.0.0.1", "port": orthanc["dicom_port"]}
    config = {
        "port": free_port(),
        "spool_dir": str(tmp_path / "spool"),
        "idle_seconds": 1,
        "sr": True,
        **extra,
    }
    config.setdefault("destinations", [dest])
    return Node(parse_config(config), model, poll_seconds=0.2)


def _read_back(url: str, modality: str) -> list:
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=url)
    found = client.search_for_instances(search_filters={"Modality": modality})
    out = []
    for attrs in found:
        ds = pydicom.Dataset.from_json(attrs)
        out.append(
            client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        )
    return out


@pytest.mark.parametrize("route", ["c-store", "stow-rs"])
def test_seg_and_sr_reach_orthanc_and_read_back_by_dicomweb(tmp_path, orthanc, study, route, model):
    extra = {"destinations": [], "dicomweb": {"url": orthanc["url"]}} if route == "stow-rs" else {}
    node = _node(tmp_path, orthanc, model, **extra)
    node.start()
    try:
        sources = [study["mono1"], study["j2k"]]
        assert storescu(node.config.port, sources).returncode == 0
        assert node.wait_idle(180)
    finally:
        node.stop()
    segs, reports = _read_back(orthanc["url"], "SEG"), _read_back(orthanc["url"], "SR")
    by_source = {
        s.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID: s
        for s in segs
    }
    assert len(segs) == 2 and len(reports) == 2
    for path in sources:
        source = pydicom.dcmread(path)
        seg = by_source[source.SOPInstanceUID]
        assert seg.StudyInstanceUID == source.StudyInstanceUID
        frames = seg.pixel_array.reshape(-1, source.Rows, source.Columns)
        expected = model.predict_single_npy_array(*_decoded(path)).measures
        assert np.array_equal(frames[0].astype(bool), expected.right)
        assert np.array_equal(frames[1].astype(bool), expected.left)
    areas = [float(v) for sr in reports for v in _numbers(sr)]
    assert len(areas) == 6 and all(a > 1000 for a in areas)  # mm², 2 lungs + total each
    assert not list((tmp_path / "spool" / "outbox").glob("1*"))


def _numbers(item) -> list:
    """Every NUM content item's value in an SR tree."""
    out = []
    for child in item.get("ContentSequence", []):
        if child.get("ValueType") == "NUM":
            out.append(child.MeasuredValueSequence[0].NumericValue)
        out += _numbers(child)
    return out


def _decoded(path: Path) -> tuple:
    from pipeline.io.reader import read_cxr

    image, meta = read_cxr(path)
    return image, meta
