"""ZIP and TAR archives as batch inputs: extracted once into the output folder, then a folder.

Studies and datasets travel as archives (a PACS's "export as ZIP", a research set's
``.tar.gz``). ``lungseg segment`` takes one as an input like a folder: :func:`extract` puts
its files under ``OUT/archives/<archive name>/`` (so outputs mirror ``<archive
name>/<member path>``) and later runs reuse that copy while the archive is unchanged (its
size and modification time, kept in a hidden marker written last).

Extraction is guarded as for any file from elsewhere: a member naming an absolute path or
one outside the archive's folder (``..``), a link or a device is refused with the archive and
the member named (tar's ``data`` filter, PEP 706; ZIP names checked here); an archive whose
files would not fit the free space of the output folder is refused before anything is
written; a run killed mid-extraction leaves a hidden partial folder that the next run
removes. Shards of one batch extracting the same archive take turns (a lock file beside the
folder): the first extracts, the others find its copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from pipeline.io.discovery import visible_files
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
    name = PurePosixPath(info.filename.replace("\\", "/"))
    if name.is_absolute() or ".." in name.parts or (name.parts and ":" in name.parts[0]):
        raise ArchiveError(archive, f"member {info.filename!r} points outside the archive")
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
