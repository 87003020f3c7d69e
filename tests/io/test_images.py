"""Non-DICOM formats: every reader returns rows x columns as stored, in [0, 1]."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from pipeline.io import MultiFrameError, NotAnImageError, TruncatedFileError, read_cxr
from pipeline.io.convert import DicomVariant, build_dicom, write_dicom


def _save_pil(arr: np.ndarray, path, **kw):
    Image.fromarray(arr).save(path, **kw)
    return path


def _save_itk(arr: np.ndarray, path):
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return path


WRITERS = {
    "png8": lambda a, d: _save_pil(a, d / "x.png"),
    "png16": lambda a, d: _save_pil(a.astype(np.uint16) * 257, d / "x16.png"),
    "tiff": lambda a, d: _save_pil(a, d / "x.tif"),
    "tiff16": lambda a, d: _save_pil(a.astype(np.uint16) * 257, d / "x16.tiff"),
    "bmp": lambda a, d: _save_pil(a, d / "x.bmp"),
    "png-rgb": lambda a, d: _save_pil(np.repeat(a[..., None], 3, axis=2), d / "rgb.png"),
    "nifti": lambda a, d: _save_itk(a, d / "x.nii.gz"),
    "mha": lambda a, d: _save_itk(a, d / "x.mha"),
    "nrrd": lambda a, d: _save_itk(a, d / "x.nrrd"),
    "dicom": lambda a, d: write_dicom(build_dicom(a, DicomVariant.RLE), d / "x.dcm"),
}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_format_decodes_to_the_same_array_never_its_transpose(tmp_path, pixels, fmt):
    path = WRITERS[fmt](pixels, tmp_path)
    image, meta = read_cxr(path)
    assert image.shape == (512, 400) == pixels.shape
    np.testing.assert_allclose(image, pixels / 255, atol=1e-6)
    assert meta["original_shape"] == (512, 400)


def test_jpeg_is_close_and_not_transposed(tmp_path, pixels):
    image, meta = read_cxr(_save_pil(pixels, tmp_path / "x.jpg", quality=95))
    assert meta["format"] == "JPEG" and image.shape == pixels.shape
    assert np.corrcoef(image.ravel(), pixels.ravel())[0, 1] > 0.999


def test_nifti_written_by_nibabel_follows_the_itk_convention(tmp_path, pixels):
    # NIfTI's first index i is the column (x); nibabel users store the array as (x, y).
    nib.save(nib.Nifti1Image(pixels.T[:, :, None], np.eye(4)), tmp_path / "nib.nii.gz")
    image, _ = read_cxr(tmp_path / "nib.nii.gz")
    np.testing.assert_allclose(image, pixels / 255, atol=1e-6)


def test_nifti_spacing_comes_from_the_header(tmp_path, pixels):
    img = sitk.GetImageFromArray(pixels)
    img.SetSpacing((0.3, 0.2))  # x (columns), y (rows)
    sitk.WriteImage(img, str(tmp_path / "s.nii.gz"))
    _, meta = read_cxr(tmp_path / "s.nii.gz")
    assert meta["pixel_spacing"] == pytest.approx((0.2, 0.3))
    assert meta["pixel_spacing_source"] == "header"


def test_float_images_are_scaled_by_their_own_range(tmp_path, pixels):
    _save_itk(pixels.astype(np.float32) * 3.0 - 100.0, tmp_path / "f.mha")
    image, _ = read_cxr(tmp_path / "f.mha")
    lo, hi = float(pixels.min()), float(pixels.max())
    np.testing.assert_allclose(image, (pixels - lo) / (hi - lo), atol=1e-5)


def test_volume_with_several_slices_is_rejected(tmp_path, pixels):
    _save_itk(np.stack([pixels, pixels]), tmp_path / "vol.nii.gz")
    with pytest.raises(MultiFrameError, match=r"vol\.nii\.gz: array of shape \(400, 512, 2\)"):
        read_cxr(tmp_path / "vol.nii.gz")
    _save_itk(np.stack([pixels, pixels]), tmp_path / "vol.mha")
    with pytest.raises(MultiFrameError, match=r"vol\.mha: array of shape \(2, 512, 400\)"):
        read_cxr(tmp_path / "vol.mha")


def test_truncated_png(tmp_path, pixels):
    data = _save_pil(pixels, tmp_path / "x.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedFileError, match=r"cut\.png: image data cannot be read"):
        read_cxr(tmp_path / "cut.png")


def test_truncated_nifti(tmp_path, pixels):
    data = _save_itk(pixels, tmp_path / "x.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedFileError, match=r"cut\.nii: NIfTI file cannot be read"):
        read_cxr(tmp_path / "cut.nii")


def test_missing_file(tmp_path):
    with pytest.raises(NotAnImageError, match="cannot be opened"):
        read_cxr(tmp_path / "nope.png")


def test_a_file_that_cannot_be_opened_is_a_transient_error_naming_it(tmp_path):
    from pipeline.io import UnreadableFileError

    missing = tmp_path / "gone.png"
    with pytest.raises(UnreadableFileError, match=r"gone\.png: cannot be opened") as info:
        read_cxr(missing)
    assert info.value.transient and isinstance(info.value, NotAnImageError)


def test_a_file_signature_changes_when_the_file_is_completed_or_replaced(tmp_path):
    import os

    from pipeline.io.images import file_signature

    path = tmp_path / "x.png"
    path.write_bytes(b"half")
    seen = [file_signature(path)]
    assert file_signature(path) == seen[0]  # reading nothing changes nothing
    path.write_bytes(b"half and the rest")  # completed
    seen.append(file_signature(path))
    other = tmp_path / "y.png"
    other.write_bytes(b"half and the rest")
    os.replace(other, path)  # replaced by another file of the same name and size
    seen.append(file_signature(path))
    assert len({tuple(s) for s in seen}) == len(seen)
    path.unlink()
    assert file_signature(path) is None
