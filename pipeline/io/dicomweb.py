"""DICOMweb as an input of the batch job: QIDO-RS to find instances, WADO-RS to fetch them.

``lungseg segment dicomweb+http://HOST/dicom-web -o OUT`` finds instances by QIDO-RS (all of
them, or ``--study UID``, or ``--query KEY=VALUE`` filters such as ``Modality=DX``); each is an
input (:meth:`DicomWebSource.inputs`) fetched by WADO-RS into
``OUT/dicomweb/<study>/<series>/<sop>.dcm`` (:func:`fetch_instance`; atomically, and a rerun
reuses what is there) a few ahead of the batch by :class:`Prefetch`'s threads, or by the
worker decoding it where that failed, so fetching runs beside the network instead of before
it. The file is the server's bytes as sent, asked for undeflated
(:meth:`DicomWebSource.retrieve`). A search reads every page of a server that caps its
answers (:meth:`DicomWebSource.instances`). The
batch segments them like any other files: the same journal, report and skip rules, rows
naming the instance's WADO-RS URL; each file is removed once its row is journalled. An
instance the server does not deliver is a failed row, tried again on the next run.
``--store-back`` stores each SEG (and SR) into the same server by STOW-RS once, while the
batch runs (:class:`StoreBack`): a marker per stored object under ``OUT/dicomweb/.stored/``
keeps reruns from storing it again.

Credentials never come from the command line: ``LUNGSEG_DICOMWEB_TOKEN`` (bearer token), or
``LUNGSEG_DICOMWEB_USER`` and ``LUNGSEG_DICOMWEB_PASSWORD`` (HTTP basic), or a JSON file named
by ``LUNGSEG_DICOMWEB_CREDENTIALS`` (``{"token": ...}`` or ``{"user": ..., "password": ...}``).
They are never logged or written to the report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from pipeline.io.discovery import InputFile, RemoteInstance
from pipeline.io.errors import InputError

_log = logging.getLogger(__name__)
SCHEME = "dicomweb+"
#: Where the fetched instances go under the batch's output folder.
CACHE = "dicomweb"


class DicomWebError(RuntimeError):
    """The DICOMweb server cannot be used (unreachable, refused, bad answer); names it."""


class FetchError(InputError):
    """An instance the server did not deliver (WADO-RS failed): tried again next run."""

    transient = True


def is_dicomweb(text: str | os.PathLike) -> bool:
    """Whether an input is a ``dicomweb+http(s)://`` URL."""
    return str(text).startswith((SCHEME + "http://", SCHEME + "https://"))


def session_from_env(env: dict[str, str] | None = None) -> Any:
    """A ``requests.Session`` with the credentials of the environment (see module docstring).

    Raises:
        DicomWebError: the credentials file cannot be read (named) or holds neither form.
    """
    import requests

    env = dict(os.environ if env is None else env)
    session = requests.Session()
    creds: dict[str, str] = {}
    if env.get("LUNGSEG_DICOMWEB_CREDENTIALS"):
        path = Path(env["LUNGSEG_DICOMWEB_CREDENTIALS"])
        try:
            creds = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DicomWebError(f"{path}: cannot read DICOMweb credentials: {err}") from err
        if not ("token" in creds or {"user", "password"} <= set(creds)):
            raise DicomWebError(f"{path}: expected {{token}} or {{user, password}}")
    token = creds.get("token") or env.get("LUNGSEG_DICOMWEB_TOKEN")
    user = creds.get("user") or env.get("LUNGSEG_DICOMWEB_USER")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user:
        session.auth = (user, creds.get("password") or env.get("LUNGSEG_DICOMWEB_PASSWORD", ""))
    return session


#: Seconds to connect to a DICOMweb server, and to wait for its next bytes, before a request
#: fails: a server that hangs fails its requests (a fetch: a failed row, tried again next
#: run) instead of stopping the batch for good (requests waits forever unless told).
TIMEOUT = (10.0, 120.0)


@dataclass(frozen=True)
class Instance:
    """One instance found by QIDO-RS."""

    study: str
    series: str
    sop: str

    def path(self, root: Path) -> Path:
        """Where the fetched file goes under ``root``."""
        return root / self.relative()

    def relative(self) -> Path:
        """The fetched file's path under the cache folder (its outputs' too)."""
        return Path(self.study, self.series, f"{self.sop}.dcm")


class DicomWebSource:
    """One DICOMweb server as a source (and, with ``--store-back``, a sink).

    Args:
        url: ``dicomweb+http(s)://host/prefix`` or the plain ``http(s)://`` root.
        studies: Study Instance UIDs to take (none: every study the query finds).
        query: QIDO-RS filters, e.g. ``{"Modality": "DX"}``.
        session: a ``requests.Session`` (default: :func:`session_from_env`).
    """

    def __init__(
        self,
        url: str,
        studies: Sequence[str] = (),
        query: dict[str, str] | None = None,
        session: Any = None,
    ):
        from dicomweb_client.api import DICOMwebClient

        self.url = url.removeprefix(SCHEME)
        self.studies, self.query = list(studies), dict(query or {})
        self.session = session or session_from_env()
        self.client = DICOMwebClient(url=self.url, session=self.session, timeout=TIMEOUT)
        self._session = session  # shared by the store-back's threads when given
        self._local, self._owner = threading.local(), threading.get_ident()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # requests and HTTP errors: one clear message naming the server
            raise DicomWebError(
                f"DICOMweb {self.url}: {what} failed: {type(err).__name__}: {err}"
            ) from err

    def instances(self) -> list[Instance]:
        """Every instance the studies and filters select, sorted (QIDO-RS).

        Raises:
            DicomWebError: the server cannot be searched.
        """
        studies = self.studies or [None]
        if len(studies) == 1:
            found = self._search(studies[0])
        else:  # a worklist of studies: a round trip each, SEARCHES at once
            with ThreadPoolExecutor(min(SEARCHES, len(studies))) as pool:
                found = set().union(*pool.map(self._search, studies))
        return sorted(found, key=lambda i: (i.study, i.series, i.sop))

    def _search(self, study: str | None) -> set[Instance]:
        """Every instance of one search, page after page (``offset``) until one is empty.

        Servers may cap an answer (at a few hundred or thousand results): the rest come
        with a larger ``offset``. A page that lists nothing new (a server that ignores
        ``offset``) ends the search with a warning.
        """
        found: set[Instance] = set()
        while True:
            page = self._call(
                "QIDO-RS search",
                self._thread_client().search_for_instances,
                study_instance_uid=study,
                search_filters=self.query or None,
                offset=len(found) or None,
            )
            new = {_instance(attrs) for attrs in page} - found
            if page and not new:
                _log.warning(
                    "DICOMweb %s: the answer to offset=%d listed only instances already "
                    "found: the server may list no more than %d; narrow the search "
                    "(--study, --query) to reach the rest",
                    self.url,
                    len(found),
                    len(found),
                )
            if not new:
                return found
            found |= new

    def inputs(self, root: Path) -> list[InputFile]:
        """Every selected instance as an input fetched into ``root`` when read (QIDO-RS).

        Raises:
            DicomWebError: the server cannot be searched.
        """
        return [
            InputFile(i.path(root), i.relative(), remote=RemoteInstance(self.url, *astuple(i)))
            for i in self.instances()
        ]

    def fetch_to(self, instance: Instance, target: Path) -> Path:
        """The instance's file ``target``, fetched by WADO-RS unless already there.

        The file is the server's bytes as sent (:meth:`retrieve`), written atomically and
        durably: a rerun trusts what is there.

        Raises:
            DicomWebError: the server did not deliver it (named, with the reason).
        """
        from pipeline.io.atomic import write_bytes_atomic

        if target.is_file():
            return target
        what = f"WADO-RS of {instance.sop}"
        data = self._call(what, self.retrieve, instance)
        if data[128:132] != b"DICM":  # not a DICOM file (PS3.10): pydicom reads what it can
            data = self._call(what, _as_file, data)
        return write_bytes_atomic(target, data)

    def retrieve(self, instance: Instance) -> bytes:
        """The instance as the server sends it (WADO-RS, any transfer syntax), unparsed.

        Asked uncompressed on the wire (``Accept-Encoding: identity``): requests asks for
        gzip by default, and a server deflating pixel data spent ~28 ms on each 512²
        instance here, 10 times the rest of the request (compressed syntaxes gain nothing
        from it). The part is cut out of the multipart answer by its boundary, not parsed.

        Raises:
            requests.RequestException: the request failed or was refused.
            ValueError: the answer is neither ``multipart/related`` nor ``application/dicom``.
        """
        with self.session.get(
            RemoteInstance(self.url, *astuple(instance)).location,
            headers=RETRIEVE_HEADERS,
            stream=True,
            timeout=TIMEOUT,
        ) as response:
            response.raise_for_status()
            body = response.raw.read(decode_content=True)  # at once: not in 10 KiB pieces
        return first_part(response.headers.get("Content-Type", ""), body)

    def stow(self, files: Sequence[Path], marker_root: Path) -> int:
        """STOW-RS ``files`` in one request, then mark each stored; return how many.

        ``files`` are the outputs of fetched instances (``<source SOP UID>.dcm``): their
        markers are named after them, so a rerun skips them by name without reading them
        (:class:`StoreBack` sends them, a request at a time).
        """
        import pydicom

        from pipeline.io.atomic import write_text_atomic

        what = f"STOW-RS of {len(files)} objects from {files[0].name}"
        datasets = [pydicom.dcmread(path) for path in files]
        self._call(what, self._thread_client().store_instances, datasets)
        for path in files:
            write_text_atomic(_marker(marker_root, path), str(path) + "\n")
        return len(files)

    def _thread_client(self) -> Any:
        """A client of this server for the calling thread (its own connections)."""
        from dicomweb_client.api import DICOMwebClient

        if threading.get_ident() == self._owner:
            return self.client
        if not hasattr(self._local, "client"):
            session = self._session or session_from_env()
            self._local.client = DICOMwebClient(url=self.url, session=session, timeout=TIMEOUT)
        return self._local.client


#: The headers of a WADO-RS retrieval: any transfer syntax, nothing deflated on the wire.
RETRIEVE_HEADERS = {
    "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
    "Accept-Encoding": "identity",
}


def first_part(content_type: str, body: bytes) -> bytes:
    """The first part of a ``multipart/related`` answer, or an ``application/dicom`` body.

    Some servers send a single instance without the multipart envelope (dicomweb-client
    accepts that too).

    Raises:
        ValueError: another media type, no boundary, or no part in the body (quoted).
    """
    from email.message import Message

    header = Message()
    header["Content-Type"] = content_type
    media = header.get_content_type()
    if media == "application/dicom":
        return body
    boundary = header.get_param("boundary")
    if media != "multipart/related" or not isinstance(boundary, str):
        raise ValueError(
            f"answer of type {content_type!r}: expected multipart/related with a boundary "
            "or application/dicom"
        )
    delimiter = b"--" + boundary.encode("ascii")
    start = body.find(delimiter)
    headers_end = body.find(b"\r\n\r\n", start) if start >= 0 else -1
    end = body.find(b"\r\n" + delimiter, headers_end)
    if headers_end < 0 or end < 0:
        raise ValueError(f"multipart answer of {len(body)} bytes without a whole part")
    return body[headers_end + 4 : end]


def _as_file(data: bytes) -> bytes:
    """``data`` (a dataset without the PS3.10 header) as a DICOM file, through pydicom."""
    import io

    import pydicom

    buffer = io.BytesIO()
    pydicom.dcmread(io.BytesIO(data), force=True).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


#: Studies :meth:`DicomWebSource.instances` searches at once (each thread its own connection).
SEARCHES = 4
#: Objects sent per STOW-RS request (:class:`StoreBack`), and requests at once.
STOW_BATCH, STOW_REQUESTS = 16, 4


def _marker(marker_root: Path, path: Path) -> Path:
    """The marker of a stored output, named after its source instance."""
    return marker_root / f"{path.stem}.stored"


class StoreBack:
    """STOW-RS of results as they are added, :data:`STOW_BATCH` objects to a request.

    The batch job adds each image's SEG (and SR) once its row is durable, so the server gets
    results while the batch runs rather than all of them after it, and a batch stopped
    half-way has stored its finished half. A file whose marker exists (stored by an earlier
    run) or that was added before is skipped; a full request is sent at once, on one of
    :data:`STOW_REQUESTS` threads (each on its own connection): a PACS's round trip per
    object, one after the other, made the store-back as slow as the batch itself.
    :meth:`finish` sends the rest and waits.

    Args:
        initializer: run by each sending thread first (the batch lowers its priority).
    """

    def __init__(self, initializer: Callable[[], None] | None = None):
        self._initializer = initializer
        self._pool: ThreadPoolExecutor | None = None
        self._seen: set[Path] = set()
        self._pending: dict[tuple[int, Path], tuple[DicomWebSource, list[Path]]] = {}
        self._sent: list[Future] = []

    def add(self, source: DicomWebSource, files: Sequence[Path], marker_root: Path) -> None:
        """Queue ``files`` for ``source`` (markers under ``marker_root``); send full requests."""
        new = [p for p in files if p not in self._seen and not _marker(marker_root, p).exists()]
        self._seen.update(new)
        _, queued = self._pending.setdefault((id(source), marker_root), (source, []))
        queued += new
        while len(queued) >= STOW_BATCH:
            self._send(source, queued[:STOW_BATCH], marker_root)
            del queued[:STOW_BATCH]

    def _send(self, source: DicomWebSource, files: list[Path], marker_root: Path) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                STOW_REQUESTS, thread_name_prefix="lungseg-stow", initializer=self._initializer
            )
        self._sent.append(self._pool.submit(source.stow, files, marker_root))

    def finish(self) -> int:
        """Send what is queued, wait for every request; return how many objects were stored.

        Raises:
            DicomWebError: a request failed (the first failure; the others were waited for,
                and the files of those that succeeded are marked stored); an ``OSError``
                where a file could not be read or its marker written.
        """
        for (_, marker_root), (source, queued) in self._pending.items():
            if queued:
                self._send(source, list(queued), marker_root)
                queued.clear()
        stored, failure = 0, None
        for future in self._sent:
            try:
                stored += future.result()
            except Exception as err:  # every request is waited for before one is raised
                failure = failure or err
        self._sent = []
        if failure is not None:
            raise failure
        return stored

    def close(self) -> None:
        """Stop: requests not begun are dropped (a rerun sends them), those under way end."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


#: Sources by process, thread and URL: a worker's or a prefetch thread's own connections
#: (none is shared with another process, nor a ``requests.Session`` between threads).
_SOURCES: dict[tuple[int, int, str], DicomWebSource] = {}


def fetch_instance(remote: RemoteInstance, target: Path) -> Path:
    """Fetch ``remote`` to ``target`` (unless there) through this thread's source of its URL.

    Raises:
        FetchError: the server did not deliver it (its URL and the reason named).
    """
    key = (os.getpid(), threading.get_ident(), remote.url)
    try:
        if key not in _SOURCES:
            _SOURCES[key] = DicomWebSource(remote.url)
        instance = Instance(remote.study, remote.series, remote.sop)
        return _SOURCES[key].fetch_to(instance, target)
    except DicomWebError as err:
        raise FetchError(target, str(err)) from err


def _instance(attrs: dict[str, Any]) -> Instance:
    def value(tag: str) -> str:
        return str(attrs[tag]["Value"][0])

    return Instance(value("0020000D"), value("0020000E"), value("00080018"))


#: Instances :class:`Prefetch` fetches at once, each thread on its own connection.
PREFETCH_THREADS = 4


class Prefetch:
    """Fetches the batch's DICOMweb instances into their files, in its order, ahead of it.

    A worker that fetched each instance just before decoding it waited a round trip per
    image, and a server's latency (a PACS across a network) went into every one. Here
    :data:`PREFETCH_THREADS` threads keep up to ``ahead`` instances (and one per thread)
    fetched before the batch reaches them. :meth:`take` waits for one; a fetch that failed
    is left to the worker decoding the instance, which tries again and reports the reason.

    Args:
        wanted: each instance to fetch and its file, in the order the batch takes them.
        ahead: instances fetched before the batch takes them, at most (besides one per
            thread).
        initializer: run by each thread first (the batch lowers its priority).
        threads: fetches at once (None: :data:`PREFETCH_THREADS`).
    """

    def __init__(
        self,
        wanted: Sequence[tuple[RemoteInstance, Path]],
        ahead: int,
        initializer: Callable[[], None] | None = None,
        threads: int | None = None,
    ):
        threads = PREFETCH_THREADS if threads is None else threads
        self._wanted = list(wanted)
        self._index = {path: i for i, (_, path) in enumerate(self._wanted)}
        self._futures: dict[int, Future] = {}
        self._next, self._ahead = 0, ahead + threads
        self._pool = None
        if self._wanted:
            self._pool = ThreadPoolExecutor(
                threads, thread_name_prefix="lungseg-prefetch", initializer=initializer
            )
            self._submit_until(self._ahead)

    def take(self, path: Path) -> None:
        """Wait until ``path``'s instance is fetched (or failed to be), and fetch on ahead."""
        i = self._index.get(path)
        if i is None or self._pool is None:
            return
        self._submit_until(i + 1 + self._ahead)
        future = self._futures.pop(i, None)
        if future is not None:
            with contextlib.suppress(Exception):  # the worker tries again and says why
                future.result()

    def _submit_until(self, end: int) -> None:
        while self._next < min(end, len(self._wanted)):
            remote, path = self._wanted[self._next]
            self._futures[self._next] = self._pool.submit(fetch_instance, remote, path)
            self._next += 1

    def close(self) -> None:
        """Stop: fetches not begun are dropped, the ones under way finish."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
