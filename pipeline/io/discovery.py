"""Find input files and map them to output paths that mirror the input tree.

An input file is a file on disk, an archive's member (:class:`ArchiveMember`,
:mod:`pipeline.io.archives`) or a DICOMweb instance (:class:`RemoteInstance`,
:mod:`pipeline.io.dicomweb`); the last two are written to their path just before they are
read.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: Suffixes that are never radiographs: sidecar files commonly found beside image folders.
NON_IMAGE_SUFFIXES = frozenset(
    {".csv", ".json", ".jsonl", ".txt", ".md", ".xml", ".yaml", ".yml", ".log", ".pdf", ".html"}
)


@dataclass(frozen=True)
class ArchiveMember:
    """A ZIP or TAR archive's member, as the archive's index describes it.

    Attributes:
        archive: the archive file.
        name: the member's name in it.
        size: its size, uncompressed.
        key: what else tells it apart: a ZIP member's CRC-32, a TAR member's offset.
        info: a ZIP member's entry of the central directory (offset, sizes, CRC, method),
            all a worker needs to read it; None for a TAR member, which the archive's one
            stream writes out (:class:`pipeline.io.archives.TarStream`).
    """

    archive: Path
    name: str
    size: int
    key: int
    info: zipfile.ZipInfo | None = None

    @property
    def streamed(self) -> bool:
        """A TAR's member: written out by its archive's stream, not read at an offset."""
        return self.info is None

    @property
    def location(self) -> str:
        """Where the member is: ``<archive>/<member name>`` (as ``zipfile.Path`` names it)."""
        return f"{self.archive}/{self.name}"

    def signature(self) -> list[int | str] | None:
        """What changes when the member or its archive changes (cf. ``file_signature``).

        Its :attr:`key` and size, and the archive's size and modification time; None when
        the archive is gone.
        """
        try:
            st = os.stat(self.archive)
        except OSError:
            return None
        return [self.key, self.size, st.st_size, st.st_mtime_ns]


@dataclass(frozen=True)
class RemoteInstance:
    """An instance of the DICOMweb server at ``url``, fetched when read.

    (:func:`pipeline.io.dicomweb.fetch_instance`.)
    """

    url: str
    study: str
    series: str
    sop: str

    @property
    def location(self) -> str:
        """The instance's WADO-RS URL: what a report row names (its fetched copy is gone)."""
        return f"{self.url}/studies/{self.study}/series/{self.series}/instances/{self.sop}"

    def signature(self) -> list[int | str]:
        """What identifies the instance: a SOP Instance UID never names other content."""
        return [self.location]


@dataclass(frozen=True)
class InputFile:
    """A file to process and its path relative to the folder it was found under.

    ``member``: the archive member the file is staged from (the file exists only while it
    is read); ``remote``: the DICOMweb instance it is fetched from (the file exists from its
    fetch until its row is journalled); both None for a file on disk.
    """

    path: Path
    relative: Path
    member: ArchiveMember | None = None
    remote: RemoteInstance | None = None

    def signature(self) -> list[int | str] | None:
        """What changes when the input changes (:func:`signature_of`)."""
        return signature_of(self.path, self.member, self.remote)

    @property
    def passing(self) -> ArchiveMember | RemoteInstance | None:
        """The member or instance whose copy ``path`` only passes through (None: a file on disk)."""
        return self.member or self.remote

    def output(self, out_dir: str | os.PathLike, suffix: str) -> Path:
        """``out_dir/relative`` with the file's suffix(es) replaced by ``suffix``."""
        name = self.relative.name
        stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem
        return Path(out_dir) / self.relative.parent / f"{stem}{suffix}"

    @property
    def is_sidecar(self) -> bool:
        """A file that by its suffix is never a radiograph (a README, a CSV...)."""
        return self.path.suffix.lower() in NON_IMAGE_SUFFIXES


def signature_of(
    path: Path, member: ArchiveMember | None, remote: RemoteInstance | None = None
) -> list[int | str] | None:
    """An archive member's or a DICOMweb instance's signature, else the file's.

    (``file_signature``: None if the file is gone.)
    """
    from pipeline.io.images import file_signature

    if remote is not None:
        return remote.signature()
    return member.signature() if member else file_signature(path)


def is_hidden(rel: Path | PurePosixPath) -> bool:
    """Whether a relative path has a hidden part (a leading dot): never an input."""
    return any(part.startswith(".") for part in rel.parts)


def iter_inputs(inputs: Sequence[str | os.PathLike | InputFile]) -> Iterator[InputFile]:
    """Yield the files under ``inputs`` (files as given, folders recursively, sorted).

    Hidden files and folders (a leading dot) are skipped: they are never radiographs and a
    folder being written by this tool holds such temporaries. An :class:`InputFile` (an
    archive's member) is yielded as it is.

    Raises:
        FileNotFoundError: an input does not exist (named in the message).
    """
    for item in inputs:
        if isinstance(item, InputFile):
            yield item
            continue
        root = Path(item)
        if root.is_file():
            yield InputFile(root, Path(root.name))
        elif root.is_dir():
            for path, rel in visible_files(root):
                yield InputFile(path, rel)
        else:
            raise FileNotFoundError(f"input {str(root)!r} does not exist")


def visible_files(root: Path) -> Iterator[tuple[Path, Path]]:
    """The files under the folder ``root``, sorted, with their paths relative to it.

    Hidden files and folders (a leading dot) are left out (see :func:`iter_inputs`).
    """
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not is_hidden(rel):
            yield path, rel
