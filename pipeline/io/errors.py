"""Typed errors for bad input, and the one error of output that stops a batch.

Every error names the file and states the reason, so a batch can report it per file and go
on. ``status`` tells a batch whether the input was deliberately *skipped* (a valid DICOM
object that is not a frontal radiograph) or *failed* (the file itself is broken).
"""

from __future__ import annotations

import os


class InputError(Exception):
    """A file that cannot be used as a chest radiograph.

    Attributes:
        path: the offending file.
        reason: what is wrong with it, in words a user can act on.
        status: ``"failed"`` for a broken file, ``"skipped"`` for a valid but unsupported one.
    """

    status = "failed"
    #: Whether the cause lies outside the file's content (it could not be opened): a batch
    #: reports it and tries the file again on its next run.
    transient = False

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class NotAnImageError(InputError):
    """The file is neither DICOM nor an image format the reader knows."""


class UnreadableFileError(NotAnImageError):
    """The file could not be opened or read (gone since it was listed, no permission, EIO)."""

    transient = True


class TruncatedFileError(InputError):
    """The file ends before its declared content (pixel data or header) is complete."""


class EmptyImageError(InputError):
    """The image has zero rows or columns."""


class NoPixelDataError(InputError):
    """A DICOM object without Pixel Data (7FE0,0010)."""


class DecodeError(InputError):
    """Pixel data could not be decoded (unsupported transfer syntax or a corrupt stream)."""


class UnsupportedSOPClassError(InputError):
    """A DICOM object of a SOP class that is not a projection radiograph (SR, SEG, CT...)."""

    status = "skipped"


class MultiFrameError(InputError):
    """A multi-frame object; chest radiographs are single frames."""

    status = "skipped"


class LateralViewError(InputError):
    """A lateral projection (ViewPosition LL/RL/LATERAL): the model segments frontal views."""

    status = "skipped"


class OutputError(RuntimeError):
    """Outputs cannot be written for a reason outside the input (disk full, read-only...).

    Attributes:
        folder: the output folder.
        reason: what the system said, with the file.
    """

    def __init__(self, folder: str, reason: str):
        super().__init__(folder, reason)
        self.folder, self.reason = folder, reason

    def __str__(self) -> str:
        return f"{self.folder}: cannot write outputs: {self.reason}"
