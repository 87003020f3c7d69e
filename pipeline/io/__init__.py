"""Image input: DICOM and image files decoded the same way for every stage."""

from pipeline.io.dicom import VOISource, is_dicom_file, read_dicom
from pipeline.io.errors import (
    DecodeError,
    EmptyImageError,
    InputError,
    LateralViewError,
    MultiFrameError,
    NoPixelDataError,
    NotAnImageError,
    TruncatedFileError,
    UnreadableFileError,
    UnsupportedSOPClassError,
)
from pipeline.io.reader import CXRReader, LoadCXR, LoadCXRd, read_cxr

__all__ = [
    "CXRReader",
    "DecodeError",
    "EmptyImageError",
    "InputError",
    "LateralViewError",
    "LoadCXR",
    "LoadCXRd",
    "MultiFrameError",
    "NoPixelDataError",
    "NotAnImageError",
    "TruncatedFileError",
    "UnreadableFileError",
    "UnsupportedSOPClassError",
    "VOISource",
    "is_dicom_file",
    "read_cxr",
    "read_dicom",
]
