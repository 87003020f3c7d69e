"""Find input files and map them to output paths that mirror the input tree.

An input file is a file on disk or a ZIP archive's member (:class:`ArchiveMember`), which
:func:`pipeline.io.archives.stage` writes to its path just before it is read.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Suffixes that are never radiographs: sidecar files commonly found beside image folders.
NON_IMAGE_SUFFIXES = frozenset(
    {".csv", ".json", ".jsonl", ".txt", ".md", ".xml", ".yaml", ".yml", ".log", ".pdf", ".html"}
)


@dataclass(frozen=True)
class ArchiveMember:
    """A ZIP archive's member, as its central directory describes it (offset, sizes, CRC)."""

    archive: Path
    info: zipfile.ZipInfo

    @property
    def location(self) -> str:
        """Where the member is: ``<archive>/<member path>`` (as ``zipfile.Path`` names it)."""
        return f"{self.archive}/{self.info.filename}"

    def signature(self) -> list[int | str] | None:
        """What changes when the member or its archive changes (cf. ``file_signature``).

        The member's CRC-32 and size, and the archive's size and modification time; None
        when the archive is gone.
        """
        try:
            st = os.stat(self.archive)
        except OSError:
            return None
        return [self.info.CRC, self.info.file_size, st.st_size, st.st_mtime_ns]


@dataclass(frozen=True)
class InputFile:
    """A file to process and its path relative to the folder it was found under.

    ``member``: the archive member the file is staged from (the file exists only while it
    is read), or None for a file on disk.
    """

    path: Path
    relative: Path
    member: ArchiveMember | None = None

    def signature(self) -> list[int | str] | None:
        """What changes when the input changes: its member's, else the file's signature."""
        from pipeline.io.images import file_signature

        return self.member.signature() if self.member else file_signature(self.path)

    def output(self, out_dir: str | os.PathLike, suffix: str) -> Path:
        """``out_dir/relative`` with the file's suffix(es) replaced by ``suffix``."""
        name = self.relative.name
        stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem
        return Path(out_dir) / self.relative.parent / f"{stem}{suffix}"

    @property
    def is_sidecar(self) -> bool:
        """A file that by its suffix is never a radiograph (a README, a CSV...)."""
        return self.path.suffix.lower() in NON_IMAGE_SUFFIXES


@dataclass(frozen=True)
class NamedFolder:
    """A folder input whose files' relative paths start with ``name``.

    An extracted archive: its outputs go under the archive's name, as its files came.
    """

    folder: Path
    name: str


def iter_inputs(
    inputs: Sequence[str | os.PathLike | NamedFolder | InputFile],
) -> Iterator[InputFile]:
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
        prefix = Path(item.name) if isinstance(item, NamedFolder) else Path()
        root = item.folder if isinstance(item, NamedFolder) else Path(item)
        if root.is_file():
            yield InputFile(root, Path(root.name))
        elif root.is_dir():
            for path, rel in visible_files(root):
                yield InputFile(path, prefix / rel)
        else:
            raise FileNotFoundError(f"input {str(root)!r} does not exist")


def visible_files(root: Path) -> Iterator[tuple[Path, Path]]:
    """The files under the folder ``root``, sorted, with their paths relative to it.

    Hidden files and folders (a leading dot) are left out (see :func:`iter_inputs`).
    """
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            yield path, rel
