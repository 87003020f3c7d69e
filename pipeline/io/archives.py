"""ZIP and TAR archives as batch inputs: ZIP members read one by one, TAR archives extracted.

Studies and datasets travel as archives (a PACS's "export as ZIP", a research set's
``.zip`` or ``.tar.gz``). ``lungseg segment`` takes one as an input like a folder whose
outputs mirror ``<archive name>/<member path>``.

A ZIP archive is not extracted: its central directory lists the members
(:func:`zip_members`), and each member is written to ``OUT/archives/<archive
name>/<member path>`` just before it is read (:func:`stage`) and removed once its row is
in the journal, so the disk holds only the images in flight, not a copy of the archive,
and the first images are segmented at once. Its CRC-32 is checked as it is read.

A TAR archive (compressed, it can only be read from its start) is extracted whole:
:func:`extract` puts its files under ``OUT/archives/<archive name>/`` and later runs reuse
that copy while the archive is unchanged (its size and modification time, kept in a hidden
marker written last).

Archives are read as any file from elsewhere: a member naming an absolute path or
one outside the archive's folder (``..``), a link or a device is refused with the archive and
the member named (tar's ``data`` filter, PEP 706; ZIP names checked here); a TAR archive
whose files would not fit the free space of the output folder is refused before anything is
written; a run killed mid-extraction leaves a hidden partial folder that the next run
removes. Shards of one batch extracting the same TAR archive take turns (a lock file beside
the folder): the first extracts, the others find its copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.io.discovery import ArchiveMember, InputFile, visible_files
from pipeline.io.errors import InputError

#: Where archives are extracted, under the output folder.
FOLDER = "archives"
#: Names that mark a file as an archive (compared in lower case).
SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
#: The marker of a complete extraction, in the extracted folder (hidden: not an input).
MARKER = ".lungseg-extracted.json"
#: Free space kept beyond an archive's files (the outputs need room too).
HEADROOM = 256 * 2**20


class ArchiveError(InputError):
    """An archive that cannot be extracted (broken, unsafe, or too large for the disk)."""


class StagingError(ArchiveError):
    """A ZIP member not written out for a reason outside its content (archive gone, disk full).

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


def extract(archive: str | os.PathLike, into: str | os.PathLike, name: str | None = None) -> Path:
    """``archive``'s files under ``into/<name>`` (by default :func:`folder_name`).

    The copy there is kept while it was extracted from the archive as it is now.

    Raises:
        ArchiveError: the archive is broken, holds an unsafe member, or does not fit.
    """
    archive, into = Path(archive), Path(into)
    target = into / (name or folder_name(archive))
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock"):  # shards of one batch wait here
        return _extract_once(archive, target)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (made if missing), held for the block."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _extract_once(archive: Path, target: Path) -> Path:
    """Extract ``archive`` to ``target`` unless the copy there is current (see :func:`extract`)."""
    signature = _signature(archive)
    if _marked(target) == signature:
        return target
    partial = target.parent / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        _extract_into(archive, partial)
        (partial / MARKER).write_text(json.dumps(signature))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


def _signature(archive: Path) -> dict[str, int | str]:
    stat = archive.stat()
    return {"archive": str(archive.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _marked(target: Path) -> dict | None:
    """The signature a complete extraction into ``target`` recorded, or None."""
    try:
        return json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _extract_into(archive: Path, folder: Path) -> None:
    """Extract ``archive`` (ZIP or TAR, by content) into the empty ``folder``."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _check_room(archive, folder, sum(i.file_size for i in zf.infolist()))
                for info in zf.infolist():
                    _extract_zip_member(zf, info, archive, folder)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                _check_room(archive, folder, sum(m.size for m in members))
                tf.extractall(folder, filter="data")
        else:
            raise ArchiveError(archive, "named as an archive but neither ZIP nor TAR inside")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise ArchiveError(archive, f"cannot be extracted: {err}") from err


def _extract_zip_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path, folder: Path
) -> None:
    """Write one ZIP member under ``folder``; refuse names that would leave it."""
    name = _safe_name(info, archive)
    if info.is_dir() or not name.parts:
        return
    target = folder.joinpath(*name.parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _check_room(archive: Path, folder: Path, size: int) -> None:
    """Refuse an archive whose files would not fit the free space (and the headroom)."""
    free = shutil.disk_usage(folder).free
    if size + HEADROOM > free:
        raise ArchiveError(
            archive,
            f"its files need {size / 2**20:.0f} MiB and {folder.parent} has "
            f"{free / 2**20:.0f} MiB free (keeping {HEADROOM // 2**20} MiB for outputs)",
        )


def is_zip(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named as a ZIP archive and is one inside."""
    return Path(path).name.lower().endswith(".zip") and zipfile.is_zipfile(path)


def zip_inputs(archive: Path, folder: Path, name: str) -> list[InputFile]:
    """The files of the ZIP ``archive`` as inputs staged under ``folder`` (outputs: ``name``).

    Sorted by path and hidden ones left out, as a folder's files are (:func:`visible_files`).

    Raises:
        ArchiveError: the archive cannot be read or a member's name leads out of it.
    """
    members = [(rel, info) for rel, info in zip_members(archive) if not _hidden(rel)]
    return [
        InputFile(folder.joinpath(*rel.parts), Path(name, *rel.parts), ArchiveMember(archive, info))
        for rel, info in sorted(members, key=lambda m: m[0].parts)
    ]


def _hidden(rel: PurePosixPath) -> bool:
    return any(part.startswith(".") for part in rel.parts)


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
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
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
        StagingError: the archive could not be read or ``path`` written (retried).
    """
    info = member.info
    if info.flag_bits & 0x1:
        raise ArchiveError(path, f"member {info.filename!r} of {member.archive} is encrypted")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.staging")
    try:
        with open(member.archive, "rb") as fh, open(temporary, "wb") as out:
            _copy_member(fh, info, out)
        os.replace(temporary, path)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, ValueError, zlib.error) as err:
        temporary.unlink(missing_ok=True)
        raise ArchiveError(path, _member_reason(member, err)) from err
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise StagingError(path, _member_reason(member, err)) from err


def _member_reason(member: ArchiveMember, err: Exception) -> str:
    return f"member {member.info.filename!r} of {member.archive} cannot be read: {err}"


def _copy_member(fh: Any, info: zipfile.ZipInfo, out: Any) -> None:
    """Copy the member ``info`` of the open archive ``fh`` to ``out``, decompressed."""
    fh.seek(info.header_offset)
    header = fh.read(_LOCAL_HEADER_SIZE)
    if len(header) != _LOCAL_HEADER_SIZE or header[:4] != _LOCAL_HEADER:
        raise zipfile.BadZipFile(f"no local file header at offset {info.header_offset}")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    fh.seek(info.header_offset + _LOCAL_HEADER_SIZE + name_length + extra_length)
    with zipfile.ZipExtFile(fh, "r", info) as src:  # decompresses, checks the CRC at the end
        shutil.copyfileobj(src, out, 1 << 20)
