"""MONAI integration: LoadCXR(d) and CXRReader give channel-first MetaTensors with metadata."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import LoadImage

from pipeline.io import CXRReader, LoadCXR, LoadCXRd, TruncatedFileError
from pipeline.io.convert import DicomVariant, build_dicom, write_dicom


@pytest.fixture()
def dicom_file(tmp_path, pixels):
    return write_dicom(
        build_dicom(pixels, DicomVariant.MONO1_WINDOW, spacing_mm=0.5), tmp_path / "a.dcm"
    )


def test_load_cxr_gives_a_channel_first_meta_tensor(dicom_file, pixels):
    img = LoadCXR()(dicom_file)
    assert isinstance(img, MetaTensor) and img.shape == (1, 512, 400)
    np.testing.assert_allclose(img[0].numpy(), pixels / 255, atol=1e-6)
    assert img.meta["filename_or_obj"] == str(dicom_file)
    assert img.meta["original_shape"] == (512, 400)
    assert torch.allclose(torch.diag(img.affine)[:2].float(), torch.tensor([0.5, 0.5]))


def test_load_cxrd_keeps_error_types(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00")
    with pytest.raises(TruncatedFileError, match=r"bad\.dcm"):
        LoadCXRd("image")({"image": bad})


def test_batches_of_mixed_formats_collate(tmp_path, dicom_file, data_dir):
    png = data_dir / "images" / "CHNCXR_0001_0.png"
    items = [{"image": str(dicom_file)}, {"image": str(png)}]
    from monai.transforms import Compose, ResizeWithPadOrCropd

    ds = Dataset(items, Compose([LoadCXRd("image"), ResizeWithPadOrCropd("image", (512, 512))]))
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 1, 512, 512)
    assert list(batch["image"].meta["format"]) == ["DICOM", "PNG"]


def test_cxr_reader_works_inside_monai_load_image(dicom_file, pixels):
    img = LoadImage(reader=CXRReader(), image_only=True, ensure_channel_first=True)(dicom_file)
    assert img.shape == (1, 512, 400)
    np.testing.assert_allclose(img[0].numpy(), pixels / 255, atol=1e-6)
    assert img.meta["sop_instance_uid"]
