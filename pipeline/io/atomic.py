"""Atomic and durable file output: temporary name in the same folder, fsync, rename, fsync.

:func:`atomic_path` is the one implementation every writer uses (batch outputs, reports,
journals' headers, the DICOM node's spool): readers never see a half-written file, and once
it returns the file and its name survive a power loss (the file is fsync'ed before the
rename, its folder after, and a folder it creates is fsync'ed into its parent), so a journal
line written next can never claim an output that is empty or unnamed on disk. Files get the
mode the process's umask gives (``0666 & ~umask``), not ``mkstemp``'s private 0600, so shards
of one batch and other users of a shared folder can read each other's outputs.

Inside :func:`deferred_folder_syncs` the folders' fsyncs wait for the caller, who makes
them all at once with :func:`sync_folders` before it claims the files (the batch job, once
per batch before its journal lines: ~3 fsyncs per batch instead of 3 per image). Inside
:func:`concurrent_writes`, where this process's fsyncs have been slow (a network share or
a spinning disk: milliseconds each), :func:`write_bytes_atomic` hands each file to a thread
and the block ends once all are durable: one image's files wait for the disk together, and
while the next one is encoded.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

#: The folders whose fsync :func:`deferred_folder_syncs` put off, or None: fsync at once.
_DEFERRED: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar(
    "lungseg_deferred_folder_syncs", default=None
)


def _read_umask() -> int:
    """The process's umask, without changing it where the system can tell (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets: ``0666`` less the umask (read at each call)."""
    return 0o666 & ~_read_umask()


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries (a rename or a new file in it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def deferred_folder_syncs() -> Iterator[set[str]]:
    """Within the block, a durable rename adds its folder to the set yielded, unfsync'ed.

    Each file is still fsync'ed before its rename, so a name that survives a power loss
    always holds the whole file; until :func:`sync_folders` is called on the set, the new
    names themselves may not survive one. Whoever records the files as done (a journal
    line) calls it first. Folders created on the way are fsync'ed into their parents at
    once, as always.
    """
    folders: set[str] = set()
    token = _DEFERRED.set(folders)
    try:
        yield folders
    finally:
        _DEFERRED.reset(token)


def sync_folders(folders: Iterable[str | os.PathLike]) -> None:
    """Flush each folder once to disk (the renames in it become durable)."""
    for folder in sorted({os.fspath(f) for f in folders}):
        fsync_path(folder)


def _sync_folder(folder: Path) -> None:
    """Flush ``folder`` to disk, or leave it to :func:`sync_folders` when deferring."""
    deferred = _DEFERRED.get()
    if deferred is None:
        fsync_path(folder)
    else:
        deferred.add(os.fspath(folder))


#: The writes :func:`concurrent_writes` handed to threads, or None: write at once.
_PENDING: contextvars.ContextVar[list[Future] | None] = contextvars.ContextVar(
    "lungseg_concurrent_writes", default=None
)
#: Threads for :func:`concurrent_writes`, by process (a forked child makes its own).
_WRITERS: dict[int, ThreadPoolExecutor] = {}
_WRITERS_LOCK = threading.Lock()
#: Files written at once at most: one image's outputs (SEG, mask, overlay, NIfTI, SR).
WRITER_THREADS = 4
#: A file fsync slower than this on average is worth a thread: handing a file to one costs
#: ~0.13 ms of CPU here, which a disk that makes it durable in ~0.05 ms does not repay.
SLOW_FSYNC_SECONDS = 0.5e-3
#: The recent wall seconds of this process's file fsyncs (a moving average; 0 before any).
_recent_fsync = 0.0


@contextlib.contextmanager
def concurrent_writes(slow_fsync: float | None = None) -> Iterator[None]:
    """Within the block, :func:`write_bytes_atomic` writes on threads; the block waits for all.

    Only where this process's file fsyncs have taken ``slow_fsync`` seconds or more on
    average lately (None: :data:`SLOW_FSYNC_SECONDS`; 0: always); elsewhere the files are
    written at once, as outside. Each file is written, fsync'ed and renamed as at once
    (with the caller's :func:`deferred_folder_syncs`, if any), so the files of the block
    wait for the disk together instead of in turn. The block ends when every write has;
    the first error of any (an ``OSError`` such as a full disk) is raised then, after all
    are done (an error of the block's own code is raised instead, also after them).
    """
    if _recent_fsync < (SLOW_FSYNC_SECONDS if slow_fsync is None else slow_fsync):
        yield
        return
    pending: list[Future] = []
    token = _PENDING.set(pending)
    try:
        yield
    finally:
        _PENDING.reset(token)
        errors = [f.exception() for f in pending]  # waits for each
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first


def _timed_fsync(fd: int) -> None:
    """``os.fsync``, its wall time folded into :data:`_recent_fsync`."""
    global _recent_fsync
    start = time.perf_counter()
    os.fsync(fd)
    _recent_fsync = 0.8 * _recent_fsync + 0.2 * (time.perf_counter() - start)


def _writers() -> ThreadPoolExecutor:
    """This process's writer threads (made on first use; not inherited through a fork)."""
    with _WRITERS_LOCK:
        pool = _WRITERS.get(os.getpid())
        if pool is None:
            pool = _WRITERS[os.getpid()] = ThreadPoolExecutor(
                WRITER_THREADS, thread_name_prefix="lungseg-writer"
            )
        return pool


def make_folders(folder: str | os.PathLike, durable: bool = True) -> None:
    """Create ``folder`` and its missing parents, each new name durable with ``durable``.

    A folder's name lives in its parent: fsync'ing a file and the folder holding it does not
    make that folder's own entry survive a power loss (POSIX; ext4 happens to, XFS and
    network file systems need not), so each parent is fsync'ed once its new folder exists.
    A folder that exists already costs one ``stat``.

    Raises:
        NotADirectoryError: a file has the name of a folder to create (named).
    """
    missing, folder = [], Path(folder)
    while not folder.is_dir() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another worker or shard
            new.mkdir()
        if not new.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file is in the way of a folder", str(new))
        if durable:  # also when another made it: its entry must be on disk before ours
            fsync_path(new.parent)


@contextlib.contextmanager
def _staged(path: Path, durable: bool) -> Iterator[tuple[int, str]]:
    """A new temporary file beside ``path`` (descriptor, name), renamed to ``path`` on success.

    The caller fills the file, fsyncs it (when ``durable``) and closes the descriptor; the
    rename is followed by the folder's fsync (or its deferral, :func:`deferred_folder_syncs`).
    An exception removes the temporary file.
    """
    make_folders(path.parent, durable)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        yield fd, tmp
        os.replace(tmp, path)
        if durable:
            _sync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success make it ``path``, durably.

    A crash or an exception leaves ``path`` as it was (absent or the previous version) and
    removes the temporary file.

    Args:
        path: the final file; its folder is created when missing (:func:`make_folders`).
        durable: fsync the file before the rename and the folder after it (and the parent
            of each folder created).
    """
    with _staged(Path(path), durable) as (fd, tmp):
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        if durable:
            fsync_path(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_path`; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` as :func:`atomic_path` does; return the path.

    The temporary file is written, given its mode and fsync'ed through the descriptor that
    created it, not reopened by name: ~0.1 ms less CPU a file (a batch job writes three
    per image). Inside :func:`concurrent_writes` this happens on a thread: the file is
    complete once the block ends, not when this returns.
    """
    path = Path(path)
    pending = _PENDING.get()
    if pending is not None:  # inside concurrent_writes: on a thread, in this context
        context = contextvars.copy_context()
        context.run(_PENDING.set, None)
        try:
            pending.append(_writers().submit(context.run, _write_bytes, path, data, durable))
            return path
        except RuntimeError:  # no thread to be had (a process or thread limit): here, now
            pass
    return _write_bytes(path, data, durable)


def _write_bytes(path: Path, data: bytes, durable: bool) -> Path:
    """:func:`write_bytes_atomic`, here and now."""
    with _staged(path, durable) as (fd, _):
        try:
            _write_all(fd, data)
            os.fchmod(fd, file_mode())
            if durable:
                _timed_fsync(fd)
        finally:
            os.close(fd)
    return path


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than it is given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
