"""ZIP and TAR archives as batch inputs, read a member at a time: never extracted whole.

Studies and datasets travel as archives (a PACS's "export as ZIP", a research set's
``.zip`` files or ``.tar.gz`` tarballs). ``lungseg segment`` takes one as an input like a
folder whose outputs mirror ``<archive name>/<member path>``. The archive's index lists its
members; each member is written to ``OUT/archives/<archive name>/<member path>`` just
before it is read and removed once its row is in the journal, so the disk holds only the
images in flight, not a copy of the archive, and the first images are segmented at once.

- **ZIP**: the central directory lists the members (:func:`zip_inputs`, sorted by path as a
  folder's files are); the worker that decodes a member writes it out from its offset in
  the archive, its CRC-32 checked (:func:`stage`).
- **TAR** (compressed, it can only be read from its start): one pass lists the members
  (:func:`tar_inputs`, in the archive's order; the list is kept beside their folder while
  the archive's size and modification time are unchanged, so a rerun does not read the
  archive to list it); during the batch one thread reads the archive once more from its
  start and writes out the members the batch still needs, in order, a bounded number ahead
  of the network (:class:`TarStream`).

Members are checked as any file from elsewhere: a name that is absolute or leads out of
the archive (``..``), a link leading out or a device is refused with the archive and the
member named (tar's ``data`` filter, PEP 706; ZIP names checked here); links and folders are
not inputs. A broken member (bad CRC, a cut archive) is a failed row naming the archive and
the member.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from pipeline.io.atomic import atomic_path
from pipeline.io.discovery import ArchiveMember, InputFile, is_hidden, visible_files
from pipeline.io.errors import InputError

#: Where archive members are written out while read, under the output folder.
FOLDER = "archives"
#: Names that mark a file as an archive (compared in lower case).
SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
#: Bytes copied at a time when a member is written out.
CHUNK = 1 << 20
#: What reading a broken archive raises (gzip's BadGzipFile is an OSError).
_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError, zlib.error)


class ArchiveError(InputError):
    """An archive or a member that cannot be read (broken, unsafe, encrypted...)."""


class StagingError(ArchiveError):
    """A member not written out for a reason outside its content (archive gone, disk full).

    The batch tries it again on its next run.
    """

    transient = True


def is_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file named as a ZIP or TAR archive."""
    return Path(path).name.lower().endswith(SUFFIXES) and Path(path).is_file()


def folder_name(path: str | os.PathLike) -> str:
    """The archive's name without its archive suffix (``study.tar.gz`` → ``study``)."""
    name = Path(path).name
    suffix = next(s for s in sorted(SUFFIXES, key=len, reverse=True) if name.lower().endswith(s))
    return name[: -len(suffix)] or name


def archives_under(root: Path) -> list[Path]:
    """The archives under the folder ``root``, sorted (hidden files and folders left out)."""
    return [path for path, _ in visible_files(root) if path.name.lower().endswith(SUFFIXES)]


def output_name(archive: Path, root: Path | None = None) -> str:
    """What ``archive`` is called among the outputs (``export``, ``batch1/export``).

    Its :func:`folder_name`, under the folder it is in below the input folder ``root``.
    """
    parent = Path() if root is None else archive.parent.relative_to(root)
    return (parent / folder_name(archive)).as_posix()


def archive_inputs(archive: Path, folder: Path, name: str) -> list[InputFile]:
    """The files of ``archive`` as inputs written out under ``folder`` (outputs: ``name``).

    Raises:
        ArchiveError: the archive is neither ZIP nor TAR, cannot be read, or holds a member
            that leads out of it.
    """
    if archive.name.lower().endswith(".zip") and zipfile.is_zipfile(archive):
        return zip_inputs(archive, folder, name)
    try:
        is_tar = tarfile.is_tarfile(archive)
    except OSError as err:
        raise ArchiveError(archive, f"cannot be read: {err}") from err
    if not is_tar:
        raise ArchiveError(archive, "named as an archive but neither ZIP nor TAR inside")
    return tar_inputs(archive, folder, name)


def _input(folder: Path, name: str, rel: PurePosixPath, member: ArchiveMember) -> InputFile:
    return InputFile(folder.joinpath(*rel.parts), Path(name, *rel.parts), member)


# --- ZIP ----------------------------------------------------------------------------------


def zip_inputs(archive: Path, folder: Path, name: str) -> list[InputFile]:
    """The files of the ZIP ``archive`` as inputs, sorted by path, hidden ones left out.

    Raises:
        ArchiveError: the archive cannot be read or a member's name leads out of it.
    """
    members = [(rel, info) for rel, info in zip_members(archive) if not is_hidden(rel)]
    return [
        _input(folder, name, rel, _zip_member(archive, info))
        for rel, info in sorted(members, key=lambda m: m[0].parts)
    ]


def _zip_member(archive: Path, info: zipfile.ZipInfo) -> ArchiveMember:
    return ArchiveMember(archive, info.filename, info.file_size, info.CRC, info)


def zip_members(archive: Path) -> list[tuple[PurePosixPath, zipfile.ZipInfo]]:
    """The files of a ZIP archive, from its central directory: ``(path, info)``, in its order.

    Folders are left out; of members with the same path the last counts (as when extracted).

    Raises:
        ArchiveError: the archive cannot be read, or a member's name is absolute or leads
            out of the archive's folder (both named).
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except _READ_ERRORS as err:
        raise ArchiveError(archive, f"cannot be read as ZIP: {err}") from err
    members = {}
    for info in infos:
        name = _safe_name(info, archive)
        if not info.is_dir() and name.parts:
            members[name] = info
    return list(members.items())


def _safe_name(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath:
    """A ZIP member's path; refused when absolute or leading out (``..``, a drive)."""
    name = PurePosixPath(info.filename.replace("\\", "/"))
    if name.is_absolute() or ".." in name.parts or (name.parts and ":" in name.parts[0]):
        raise ArchiveError(archive, f"member {info.filename!r} points outside the archive")
    return name


#: The local file header of a ZIP member: its signature and length before the name.
_LOCAL_HEADER, _LOCAL_HEADER_SIZE = b"PK\x03\x04", 30


def stage(member: ArchiveMember, path: Path) -> None:
    """Write a ZIP member to ``path`` (atomically: complete or absent), its CRC-32 checked.

    Read from its offset in the archive, as the central directory gives it: no listing of
    the archive again, whatever its size.

    Raises:
        ArchiveError: the member is encrypted, compressed by a method Python lacks, or its
            data is broken (bad CRC, a cut archive); the archive and the member named.
        StagingError: the archive could not be opened or ``path`` written (retried).
        ValueError: ``member`` is not a ZIP member (a TAR's comes from :class:`TarStream`).
    """
    info = member.info
    if member.streamed:
        raise ValueError(f"{member.location} is no ZIP member: its archive's stream writes it")
    if info.flag_bits & 0x1:
        raise ArchiveError(path, f"member {info.filename!r} of {member.archive} is encrypted")
    try:
        fh = open(member.archive, "rb")  # noqa: SIM115  (closed below: its error apart)
    except OSError as err:
        raise StagingError(path, _member_reason(member, err)) from err
    with fh, _member_errors(member, path):
        _seek_to_data(fh, info)
        with zipfile.ZipExtFile(fh, "r", info) as src:
            _write_out(iter(lambda: src.read(CHUNK), b""), path, member)


def _seek_to_data(fh: IO[bytes], info: zipfile.ZipInfo) -> None:
    """Position ``fh`` at the member's data, after its local file header."""
    fh.seek(info.header_offset)
    header = fh.read(_LOCAL_HEADER_SIZE)
    if len(header) != _LOCAL_HEADER_SIZE or header[:4] != _LOCAL_HEADER:
        raise ArchiveError(fh.name, f"no member {info.filename!r} at offset {info.header_offset}")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    fh.seek(info.header_offset + _LOCAL_HEADER_SIZE + name_length + extra_length)


def _member_reason(member: ArchiveMember, err: BaseException) -> str:
    return f"member {member.name!r} of {member.archive} cannot be read: {err}"


@contextlib.contextmanager
def _member_errors(member: ArchiveMember, path: Path) -> Iterator[None]:
    """Errors reading ``member`` as an :class:`ArchiveError` naming it."""
    try:
        yield
    except ArchiveError:
        raise
    except (*_READ_ERRORS, NotImplementedError) as err:
        raise ArchiveError(path, _member_reason(member, err)) from err


class _ReadError(Exception):
    """Reading a member failed (the archive, not the disk): its cause is the error."""


def _reading(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks``, with what reading them raises wrapped in :class:`_ReadError`."""
    try:
        yield from chunks
    except Exception as err:
        raise _ReadError() from err


def _write_out(chunks: Iterator[bytes], path: Path, member: ArchiveMember) -> None:
    """``chunks`` to ``path`` through a hidden temporary: complete or absent.

    :func:`~pipeline.io.atomic.atomic_path` without fsyncs: the copy lives for one image,
    and a rerun writes it again.

    Raises:
        StagingError: ``path`` could not be written (disk full, no permission, in the way).
        whatever reading ``chunks`` raises (the temporary removed).
    """
    try:
        with atomic_path(path, durable=False) as temporary, open(temporary, "wb") as out:
            for chunk in _reading(chunks):
                out.write(chunk)
    except _ReadError as err:
        raise err.__cause__ from None
    except OSError as err:
        raise StagingError(path, f"{member.location} could not be written out: {err}") from err


# --- TAR ----------------------------------------------------------------------------------


def tar_inputs(archive: Path, folder: Path, name: str) -> list[InputFile]:
    """The regular files of the TAR ``archive`` as inputs, in its order, hidden ones left out.

    The list is kept beside ``folder`` (hidden) and reused while the archive is unchanged.

    Raises:
        ArchiveError: the archive cannot be read or holds a member that leads out of it.
    """
    return [
        _input(folder, name, rel, ArchiveMember(archive, rel.as_posix(), size, offset))
        for rel, offset, size in _listed(archive, folder)
        if not is_hidden(rel)
    ]


def _listed(archive: Path, folder: Path) -> list[tuple[PurePosixPath, int, int]]:
    """:func:`tar_members`, kept in ``.<folder>.tar-members.json`` beside ``folder``."""
    kept = folder.parent / f".{folder.name}.tar-members.json"
    signature = _signature(archive)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(kept.read_text())
        if saved["archive"] == signature:
            return [(PurePosixPath(n), int(o), int(s)) for n, o, s in saved["members"]]
    members = tar_members(archive, folder)
    with contextlib.suppress(OSError):  # without it a rerun only lists the archive again
        kept.parent.mkdir(parents=True, exist_ok=True)
        partial = kept.with_name(f"{kept.name}.{os.getpid()}.partial")
        listed = [[m.as_posix(), o, s] for m, o, s in members]
        partial.write_text(json.dumps({"archive": signature, "members": listed}))
        os.replace(partial, kept)
    return members


def _signature(archive: Path) -> dict[str, int | str]:
    stat = archive.stat()
    return {"archive": str(archive.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def tar_members(archive: Path, folder: Path) -> list[tuple[PurePosixPath, int, int]]:
    """The regular files of a TAR archive: ``(path, offset, size)``, in its order.

    Read once from its start. Of members with the same path the last counts (as when
    extracted); links and folders are left out.

    Raises:
        ArchiveError: the archive cannot be read, or a member would leave ``folder`` when
            extracted (an absolute path, ``..``, a link leading out, a device): tar's
            ``data`` filter refuses it.
    """
    members: dict[PurePosixPath, tuple[int, int]] = {}
    try:
        with tarfile.open(archive, "r|*") as tf:
            for info in tf:
                _check_tar_member(info, archive, folder)
                if info.isreg():
                    rel = PurePosixPath(info.name)
                    members.pop(rel, None)
                    members[rel] = (info.offset, info.size)
    except ArchiveError:
        raise
    except _READ_ERRORS as err:
        raise ArchiveError(archive, f"cannot be read as TAR: {err}") from err
    return [(rel, offset, size) for rel, (offset, size) in members.items()]


def _check_tar_member(info: tarfile.TarInfo, archive: Path, folder: Path) -> None:
    try:
        tarfile.data_filter(info, str(folder))
    except tarfile.FilterError as err:
        raise ArchiveError(archive, f"member {info.name!r} refused: {err}") from err


class TarStream:
    """A TAR archive read from its start on a thread, the wanted members written out in order.

    A compressed TAR can only be read in order, so the batch takes its members in the
    archive's order (:meth:`take`); the thread writes a member only while fewer than
    ``ahead`` written ones wait to be taken, so the disk holds those and the ones in
    flight. :meth:`close` stops the thread and removes what was written and not taken.

    Args:
        archive: the TAR archive.
        wanted: the members to write out, by offset in the archive, with their paths.
        ahead: members written out before they are taken, at most.
    """

    def __init__(self, archive: Path, wanted: dict[int, Path], ahead: int):
        self.archive, self.wanted, self.ahead = archive, dict(wanted), max(1, ahead)
        self._cond = threading.Condition()
        self._ready: dict[int, ArchiveError | None] = {}  # offset: written, or why not
        self._waiting = 0  # written out, not taken
        self._ended = self._closed = False
        self._thread = threading.Thread(target=self._run, name="lungseg-tar", daemon=True)
        self._thread.start()

    def take(self, offset: int) -> None:
        """Wait until the member at ``offset`` is written out to its path.

        Raises:
            ArchiveError: it could not be (the archive broken or changed since listed).
        """
        with self._cond:
            self._cond.wait_for(lambda: offset in self._ready or self._ended)
            if offset not in self._ready:
                path = self.wanted.get(offset, self.archive)
                raise ArchiveError(path, f"no member at offset {offset} in {self.archive}")
            error = self._ready.pop(offset)
            self._waiting -= error is None
            self._cond.notify_all()
        if error is not None:
            raise error

    def close(self) -> None:
        """Stop reading; remove the members written out and never taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=60)
        with self._cond:
            for offset, error in self._ready.items():
                if error is None:
                    self.wanted[offset].unlink(missing_ok=True)

    def _run(self) -> None:
        remaining, failure = dict(self.wanted), None
        try:
            with tarfile.open(self.archive, "r|*") as tf:
                for info in tf:
                    path = remaining.get(info.offset)
                    if path is not None and self._room():
                        self._put(info.offset, self._write(tf, info, path))
                        del remaining[info.offset]  # kept above if reading it broke off
                    if not remaining or self._closed:
                        break
        except _READ_ERRORS as err:  # the archive broke off: what is left cannot be read
            failure = err
        finally:
            self._end(remaining, failure)

    def _room(self) -> bool:
        """Wait for room to write one more (False: closed meanwhile)."""
        with self._cond:
            self._cond.wait_for(lambda: self._waiting < self.ahead or self._closed)
            return not self._closed

    def _write(self, tf: tarfile.TarFile, info: tarfile.TarInfo, path: Path) -> ArchiveError | None:
        """Write the member ``info`` to ``path``; None, or the error of a disk that failed.

        Raises:
            what reading the archive raises where it breaks off.
        """
        member = ArchiveMember(self.archive, info.name, info.size, info.offset)
        src = tf.extractfile(info)
        try:
            _write_out(iter(lambda: src.read(CHUNK), b""), path, member)
        except StagingError as err:
            return err
        return None

    def _put(self, offset: int, error: ArchiveError | None) -> None:
        with self._cond:
            self._ready[offset] = error
            self._waiting += error is None
            self._cond.notify_all()

    def _end(self, remaining: dict[int, Path], failure: BaseException | None) -> None:
        """Mark the members not written out as failed (why: ``failure``, else not found)."""
        reason = f"cannot be read: {failure}" if failure else "not found (changed since listed?)"
        with self._cond:
            for offset, path in remaining.items():
                self._ready[offset] = ArchiveError(path, f"in {self.archive}: {reason}")
            self._ended = True
            self._cond.notify_all()
