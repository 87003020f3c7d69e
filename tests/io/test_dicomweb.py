"""The DICOMweb source (pipeline.io.dicomweb): its fetch (a stand-in server), its store-back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.io import dicomweb
from pipeline.io.dicomweb import (
    STOW_BATCH,
    STOW_REQUESTS,
    DicomWebError,
    DicomWebSource,
    StoreBack,
)


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


def _store(source: DicomWebSource, files: list[Path], markers: Path) -> int:
    """All of ``files`` through a :class:`StoreBack` of their own; how many were stored."""
    queue = StoreBack()
    try:
        queue.add(source, files, markers)
        return queue.finish()
    finally:
        queue.close()


def test_store_back_sends_batches_a_few_at_once_and_each_object_once(tmp_path, monkeypatch):
    """Before, one request per object, one after the other: a PACS's round trip each."""
    from dicomweb_client.api import DICOMwebClient

    server = _Server()
    monkeypatch.setattr(DICOMwebClient, "store_instances", server.store_instances)
    files = _outputs(tmp_path / "seg", 3 * STOW_BATCH + 5)
    source = DicomWebSource("dicomweb+http://127.0.0.1:9/dicom-web", session=None)
    assert _store(source, files, tmp_path / ".stored") == len(files)
    assert sorted(server.sizes) == [5] + [STOW_BATCH] * 3
    assert 2 <= server.most <= STOW_REQUESTS
    assert len(list((tmp_path / ".stored").iterdir())) == len(files)
    server.sizes.clear()
    assert _store(source, files, tmp_path / ".stored") == 0 and server.sizes == []


def test_a_failed_request_names_the_server_and_keeps_what_was_stored(tmp_path, monkeypatch):
    from dicomweb_client.api import DICOMwebClient

    server = _Server(fail=frozenset({3}))
    monkeypatch.setattr(DICOMwebClient, "store_instances", server.store_instances)
    monkeypatch.setattr(dicomweb, "STOW_REQUESTS", 1)  # in order: the third request fails
    files = _outputs(tmp_path / "seg", 4 * STOW_BATCH)
    source = DicomWebSource("dicomweb+http://127.0.0.1:9/dicom-web", session=None)
    with pytest.raises(DicomWebError, match=r"127\.0\.0\.1:9/dicom-web: STOW-RS .* reset"):
        _store(source, files, tmp_path / ".stored")
    assert len(list((tmp_path / ".stored").iterdir())) == 3 * STOW_BATCH  # the 4th went too
    assert _store(source, files, tmp_path / ".stored") == STOW_BATCH  # the failed one's only


def _until(condition, seconds: float = 5.0) -> bool:
    """Whether ``condition()`` came true within ``seconds`` (polled)."""
    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)
    return condition()


def test_store_back_sends_a_full_request_while_more_are_still_coming(tmp_path, monkeypatch):
    """The batch adds each result once its row is durable: the server gets results while
    the batch runs (before, all of them after it), each once."""
    from dicomweb_client.api import DICOMwebClient

    server = _Server()
    monkeypatch.setattr(DICOMwebClient, "store_instances", server.store_instances)
    files = _outputs(tmp_path / "seg", 2 * STOW_BATCH + 3)
    markers = tmp_path / ".stored"
    markers.mkdir()
    (markers / f"{files[-1].stem}.stored").write_text("an earlier run's\n")
    source = DicomWebSource("dicomweb+http://127.0.0.1:9/dicom-web", session=None)
    queue = StoreBack()
    try:
        queue.add(source, files[: STOW_BATCH - 1], markers)
        time.sleep(0.1)
        assert server.sizes == []  # not a full request yet
        queue.add(source, files[: STOW_BATCH + 1], markers)  # the first ones again: ignored
        assert _until(lambda: server.sizes == [STOW_BATCH])  # sent before finish
        queue.add(source, files[STOW_BATCH + 1 :], markers)
        assert queue.finish() == len(files) - 1  # the one an earlier run stored is not sent
    finally:
        queue.close()
    assert sorted(server.sizes) == [2, STOW_BATCH, STOW_BATCH]
    assert len(list(markers.iterdir())) == len(files)


def test_closing_the_store_back_drops_the_requests_not_begun(tmp_path, monkeypatch):
    """A batch that stops leaves the unsent results to the next run (no marker)."""
    from dicomweb_client.api import DICOMwebClient

    server = _Server()
    monkeypatch.setattr(DICOMwebClient, "store_instances", server.store_instances)
    monkeypatch.setattr(dicomweb, "STOW_REQUESTS", 1)
    files = _outputs(tmp_path / "seg", 4 * STOW_BATCH)
    source = DicomWebSource("dicomweb+http://127.0.0.1:9/dicom-web", session=None)
    queue = StoreBack()
    queue.add(source, files, tmp_path / ".stored")
    assert _until(lambda: len(server.sizes) == 1)
    queue.close()
    stored = len(list((tmp_path / ".stored").iterdir()))
    assert stored == STOW_BATCH * len(server.sizes) < len(files)


class _Wado:
    """A stand-in DICOMweb server on loopback: ``answer(path) -> (content type, body)`` (or
    one answer for every request); the requests' paths and headers kept."""

    def __init__(self, content_type: str = "", body: bytes = b"", answer=None):
        import http.server

        ctype, data = content_type, body
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        wado = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                wado.headers.append(dict(self.headers))
                wado.paths.append(self.path)
                content_type, body = (answer or (lambda _: (ctype, data)))(self.path)
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"dicomweb+http://127.0.0.1:{self.server.server_port}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _multipart(part: bytes, boundary: str = "b0und4ry") -> tuple[str, bytes]:
    content_type = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return content_type, head + part + f"\r\n--{boundary}--\r\n".encode()


@pytest.fixture()
def dicom_file(tmp_path) -> bytes:
    """A small DICOM file's bytes (PS3.10: preamble, DICM, file meta)."""
    return _outputs(tmp_path / "source", 1)[0].read_bytes()


def _fetch(url: str, target: Path) -> Path:
    from pipeline.io.dicomweb import Instance

    return DicomWebSource(url, session=None).fetch_to(Instance("1.2", "1.2.3", "1.2.3.4"), target)


def test_a_fetch_asks_for_no_deflation_and_keeps_the_servers_bytes(tmp_path, dicom_file):
    """Before, requests asked for gzip (the server deflated pixel data: ~28 ms a 512²
    instance, 10 times the rest) and pydicom parsed and wrote the instance again."""
    wado = _Wado(*_multipart(dicom_file))
    try:
        target = _fetch(wado.url, tmp_path / "cache" / "x.dcm")
    finally:
        wado.close()
    assert target.read_bytes() == dicom_file
    (sent,) = wado.headers
    assert sent["Accept-Encoding"] == "identity"
    assert "transfer-syntax=*" in sent["Accept"] and "application/dicom" in sent["Accept"]


def test_an_answer_without_the_multipart_envelope_or_the_file_header_is_taken(tmp_path, dicom_file):
    """Some servers send the instance bare, or a dataset without its PS3.10 header."""
    wado = _Wado("application/dicom", dicom_file)
    try:
        assert _fetch(wado.url, tmp_path / "bare.dcm").read_bytes() == dicom_file
    finally:
        wado.close()
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(dicom_file))
    headless = pydicom.filebase.DicomBytesIO()
    ds.save_as(headless, enforce_file_format=False, implicit_vr=False, little_endian=True)
    wado = _Wado(*_multipart(headless.getvalue()))
    try:
        fetched = _fetch(wado.url, tmp_path / "headless.dcm")
    finally:
        wado.close()
    assert fetched.read_bytes()[128:132] == b"DICM"
    assert pydicom.dcmread(fetched).SOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.parametrize(
    ("content_type", "body", "reason"),
    [
        ("text/html", b"<html>login</html>", "'text/html'"),
        ('multipart/related; type="application/dicom"', b"--x\r\n\r\n", "boundary"),
        ('multipart/related; boundary="x"', b"--x\r\nContent-Type: a\r\n\r\nDICM", "whole part"),
    ],
)
def test_an_answer_that_is_no_instance_is_a_fetch_error_naming_the_server(
    tmp_path, content_type, body, reason
):
    from pipeline.io.dicomweb import FetchError, fetch_instance
    from pipeline.io.discovery import RemoteInstance

    wado = _Wado(content_type, body)
    try:
        remote = RemoteInstance(wado.url.removeprefix("dicomweb+"), "1.2", "1.2.3", "1.2.3.4")
        with pytest.raises(FetchError, match=reason) as err:
            fetch_instance(remote, tmp_path / "x.dcm")
    finally:
        wado.close()
    assert wado.url.removeprefix("dicomweb+") in str(err.value)
    assert not (tmp_path / "x.dcm").exists()


def test_prefetch_fetches_in_order_a_few_at_once_and_leaves_failures_to_the_worker(
    tmp_path, monkeypatch
):
    """Each instance is fetched once, up to 4 at once, never more than ``ahead`` + 4
    beyond the one taken; a failed fetch does not stop :meth:`take`."""
    from pipeline.io.dicomweb import PREFETCH_THREADS, FetchError, Prefetch
    from pipeline.io.discovery import RemoteInstance

    lock, state = threading.Lock(), {"now": 0, "most": 0, "started": []}

    def fetch(remote, path):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            state["started"].append(path)
        time.sleep(0.03)
        with lock:
            state["now"] -= 1
        if path.name == "5.dcm":
            raise FetchError(path, "connection reset")
        return path

    monkeypatch.setattr(dicomweb, "fetch_instance", fetch)
    wanted = [
        (RemoteInstance("http://x", "1", "2", str(i)), tmp_path / f"{i}.dcm") for i in range(20)
    ]
    prefetch = Prefetch(wanted, ahead=3)
    for i, (_, path) in enumerate(wanted):
        prefetch.take(path)
        assert path in state["started"]
        assert len(state["started"]) <= i + 1 + 3 + PREFETCH_THREADS
    prefetch.close()
    assert state["started"] == [path for _, path in wanted]
    assert 2 <= state["most"] <= PREFETCH_THREADS


def test_closing_the_prefetch_drops_the_fetches_not_begun(tmp_path, monkeypatch):
    from pipeline.io.dicomweb import Prefetch
    from pipeline.io.discovery import RemoteInstance

    started = []
    monkeypatch.setattr(
        dicomweb, "fetch_instance", lambda r, p: (started.append(p), time.sleep(0.05))
    )
    wanted = [
        (RemoteInstance("http://x", "1", "2", str(i)), tmp_path / f"{i}.dcm") for i in range(40)
    ]
    prefetch = Prefetch(wanted, ahead=30, threads=2)
    prefetch.take(wanted[0][1])
    prefetch.close()
    assert 1 <= len(started) <= 4


def _row(study: str, series: str, sop: str) -> dict:
    """One instance as QIDO-RS lists it (DICOM JSON)."""
    uids = {"0020000D": study, "0020000E": series, "00080018": sop}
    return {tag: {"vr": "UI", "Value": [uid]} for tag, uid in uids.items()}


def _qido(found: list[str], page: int, offsets: bool = True):
    """QIDO-RS answers listing ``found`` (SOP Instance UIDs) ``page`` at a time, as servers
    that cap their results do; ``offsets``: whether the server heeds ``offset``."""
    import json
    from urllib.parse import parse_qs, urlparse

    def answer(path: str) -> tuple[str, bytes]:
        start = int(parse_qs(urlparse(path).query).get("offset", ["0"])[0]) if offsets else 0
        rows = [_row("1.2", "1.2.3", sop) for sop in found[start : start + page]]
        return "application/dicom+json", json.dumps(rows).encode()

    return answer


@pytest.mark.parametrize("page", [3, 7, 100])
def test_a_search_reads_every_page_of_a_server_that_caps_its_results(page):
    """Before, only the first page was read: a PACS capping QIDO-RS answers (many do, at
    a few hundred or thousand) silently left the rest of the archive out."""
    found = [f"1.2.3.{i}" for i in range(7)]
    wado = _Wado(answer=_qido(found, page))
    try:
        instances = DicomWebSource(wado.url, session=None).instances()
    finally:
        wado.close()
    assert [i.sop for i in instances] == found
    assert len(wado.paths) == -(-len(found) // page) + 1  # and the empty page that ends it


def test_a_server_that_ignores_the_offset_is_not_asked_forever(caplog):
    wado = _Wado(answer=_qido([f"1.2.3.{i}" for i in range(7)], 3, offsets=False))
    try:
        instances = DicomWebSource(wado.url, session=None).instances()
    finally:
        wado.close()
    assert [i.sop for i in instances] == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
    assert len(wado.paths) == 2
    assert "offset=3" in caplog.text and "--study" in caplog.text


def test_a_server_that_hangs_fails_the_fetch_instead_of_stopping_the_batch(
    tmp_path, monkeypatch, dicom_file
):
    """Without a timeout requests waits for an answer forever: one hung fetch would stop
    the batch (dicomweb-client's own requests time out after 20 s; the fetch is ours)."""
    from pipeline.io.dicomweb import FetchError, fetch_instance
    from pipeline.io.discovery import RemoteInstance

    def slow(path: str) -> tuple[str, bytes]:
        time.sleep(1.0)
        return _multipart(dicom_file)

    monkeypatch.setattr(dicomweb, "TIMEOUT", (1.0, 0.2))
    wado = _Wado(answer=slow)
    try:
        remote = RemoteInstance(wado.url.removeprefix("dicomweb+"), "1.2", "1.2.3", "1.2.3.4")
        start = time.perf_counter()
        with pytest.raises(FetchError, match="timed out"):
            fetch_instance(remote, tmp_path / "x.dcm")
        assert time.perf_counter() - start < 0.9
    finally:
        wado.close()


def test_a_worklist_of_studies_is_searched_a_few_at_once():
    """Before, one study after another: a round trip each (208 studies through a 10 ms
    proxy: 5.2 s with the pages, 1.3 s four at once)."""
    import json
    from urllib.parse import urlparse

    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def answer(path: str) -> tuple[str, bytes]:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        study = urlparse(path).path.split("/studies/")[1].split("/")[0]
        rows = [] if "offset" in path else [_row(study, "1.2.3", study + ".1")]
        return "application/dicom+json", json.dumps(rows).encode()

    studies = [f"1.2.{i}" for i in range(8)]
    wado = _Wado(answer=answer)
    try:
        instances = DicomWebSource(wado.url, studies, session=None).instances()
    finally:
        wado.close()
    assert [i.sop for i in instances] == [s + ".1" for s in studies]
    assert 2 <= state["most"] <= dicomweb.SEARCHES
