"""The DICOMweb source's store-back (pipeline.io.dicomweb), its client stood in for."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.io import dicomweb
from pipeline.io.dicomweb import STOW_BATCH, STOW_REQUESTS, DicomWebError, DicomWebSource


def _outputs(folder: Path, count: int) -> list[Path]:
    """``count`` small DICOM files named as a batch's SEGs are (after their source)."""
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        ds = pydicom.Dataset()
        ds.SOPInstanceUID, ds.SOPClassUID = generate_uid(), "1.2.840.10008.5.1.4.1.1.66.4"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        paths.append(folder / f"source{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


class _Server:
    """What a stand-in client's STOW-RS requests did: sizes, and most at once."""

    def __init__(self, fail: frozenset[int] = frozenset()):
        self.sizes: list[int] = []
        self.now = self.most = 0
        self.lock = threading.Lock()
        self.fail = fail  # the requests that fail, counted from 1

    def store_instances(self, datasets):  # set on the client class: bound to this server
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.sizes.append(len(datasets))
            failing = len(self.sizes) in self.fail
        time.sleep(0.05)  # a round trip: requests overlap if they can
        with self.lock:
            self.now -= 1
        if failing:
            raise ConnectionError("connection reset")


def test_store_back_sends_batches_a_few_at_once_and_each_object_once(tmp_path, monkeypatch):
    """Before, one request per object, one after the other: a PACS's round trip each."""
    from dicomweb_client.api import DICOMwebClient

    server = _Server()
    monkeypatch.setattr(DICOMwebClient, "store_instances", server.store_instances)
    files = _outputs(tmp_path / "seg", 3 * STOW_BATCH + 5)
    source = DicomWebSource("dicomweb+http://127.0.0.1:9/dicom-web", session=None)
    assert source.store(files, tmp_path / ".stored") == len(files)
    assert sorted(server.sizes) == [5] + [STOW_BATCH] * 3
    assert 2 <= server.most <= STOW_REQUESTS
    assert len(list((tmp_path / ".stored").iterdir())) == len(files)
    server.sizes.clear()
    assert source.store(files, tmp_path / ".stored") == 0 and server.sizes == []


def test_a_failed_request_names_the_server_and_keeps_what_was_stored(tmp_path, monkeypatch):
    from dicomweb_client.api import DICOMwebClient

    server = _Server(fail=frozenset({3}))
    monkeypatch.setattr(DICOMwebClient, "store_instances", server.store_instances)
    monkeypatch.setattr(dicomweb, "STOW_REQUESTS", 1)  # in order: the third request fails
    files = _outputs(tmp_path / "seg", 4 * STOW_BATCH)
    source = DicomWebSource("dicomweb+http://127.0.0.1:9/dicom-web", session=None)
    with pytest.raises(DicomWebError, match=r"127\.0\.0\.1:9/dicom-web: STOW-RS .* reset"):
        source.store(files, tmp_path / ".stored")
    assert len(list((tmp_path / ".stored").iterdir())) == 3 * STOW_BATCH  # the 4th went too
    assert source.store(files, tmp_path / ".stored") == STOW_BATCH  # the failed one's only
