"""Decoding at the model's resolution: J2K/HTJ2K levels, JPEG DCT scaling, block means."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.io.convert import DicomVariant, build_dicom, write_dicom
from pipeline.io.reader import LoadCXR, read_cxr
from pipeline.io.reduced import block_mean, j2k_layout, recentre, reduction_factor

#: Encodings and the path each takes: a wavelet level, DCT scaling, or a block mean.
VARIANTS = (
    DicomVariant.JPEG2000,  # 12-bit precision: Pillow's 16-bit samples are shifted back
    DicomVariant.HTJ2K,
    DicomVariant.JPEG_LOSSLESS,
    DicomVariant.MONO2_16BIT,
    DicomVariant.MONO1_WINDOW,
    DicomVariant.JPEG_BASELINE,
)


@pytest.fixture(scope="module")
def large(pixels) -> np.ndarray:
    """The 512 x 400 radiograph at 1536 x 1200 (not square: a transpose cannot pass)."""
    return np.asarray(Image.fromarray(pixels).resize((1200, 1536), Image.Resampling.BICUBIC))


def _box(image: np.ndarray, k: int) -> np.ndarray:
    rows, cols = -(-image.shape[0] // k) * k, -(-image.shape[1] // k) * k
    padded = np.pad(image, ((0, rows - image.shape[0]), (0, cols - image.shape[1])), "edge")
    return padded.reshape(rows // k, k, cols // k, k).mean(axis=(1, 3))


def test_factor_and_block_mean_by_hand():
    assert reduction_factor((2048, 2048), 512) == 4
    assert reduction_factor((3000, 2500), 512) == 5
    assert reduction_factor((600, 500), 512) == 1
    assert reduction_factor((3000, 2500), None) == 1
    # with the letterbox size: whole multiples of it (2048 -> 512 -> 256, 1800 -> 450 -> 225),
    # else at least twice the minimum (3000 x 2500 to 256 x 213 is not a whole ratio)
    assert reduction_factor((2048, 1800), 512, 256) == 4
    assert reduction_factor((3000, 2500), 512, 256) == 2
    assert reduction_factor((2048, 2048), 512, 256, powers_of_two=True) == 4
    assert reduction_factor((3000, 2500), 512, 256, powers_of_two=True) == 2
    assert reduction_factor((1536, 1200), 384, powers_of_two=True) == 4
    arr = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint16)
    # 2 x 2 blocks, the last column padded by replication: means 2 and 4.5 -> 5 (rounded)
    np.testing.assert_array_equal(block_mean(arr, 2), [[2, 4]])
    assert block_mean(arr, 2).dtype == np.uint16


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_reduced_decode_matches_block_means_of_the_full_image(tmp_path, large, variant):
    path = write_dicom(
        build_dicom(large, variant, name=f"r-{variant}", spacing_mm=0.2), tmp_path / "x.dcm"
    )
    full, full_meta = read_cxr(path)
    small, meta = read_cxr(path, min_size=384)
    assert meta["reduction"] == 4 and meta["reduced_from"] == full.shape
    assert meta["original_shape"] == full_meta["original_shape"] == (1536, 1200)
    assert small.shape == (384, 300) and small.dtype == np.float32
    assert small.min() >= 0.0 and small.max() <= 1.0
    # the same picture, on the grid of 4 x 4 block averages (a wrong value range, a
    # transpose or a half-pixel shift would each cost far more than this)
    assert np.abs(small - _box(full, 4)).mean() < 0.005
    assert {k: v for k, v in meta.items() if k not in ("reduced_from", "reduction")} == full_meta


def test_small_images_are_decoded_in_full(tmp_path, pixels):
    path = write_dicom(build_dicom(pixels, DicomVariant.JPEG2000), tmp_path / "x.dcm")
    image, meta = read_cxr(path, min_size=512)
    assert image.shape == pixels.shape and "reduced_from" not in meta


def test_j2k_header_is_read_for_precision_and_levels(tmp_path, large):
    from pydicom.encaps import generate_frames

    ds = build_dicom(large, DicomVariant.JPEG2000)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    precision, signed, levels = j2k_layout(frame)
    assert (precision, signed) == (12, False) and levels >= 2
    assert j2k_layout(b"not a codestream") is None


def test_recentre_moves_the_picture_by_the_fraction_asked():
    ramp = np.tile(np.arange(8, dtype=np.float32), (8, 1))
    moved = recentre(ramp, 0.375)
    np.testing.assert_allclose(moved[:, :-1], ramp[:, :-1] + 0.375)
    np.testing.assert_array_equal(moved[:, -1], ramp[:, -1])


def test_loader_passes_the_minimum_size(tmp_path, large):
    path = write_dicom(build_dicom(large, DicomVariant.HTJ2K), tmp_path / "x.dcm")
    image = LoadCXR(min_size=768)(path)
    assert tuple(image.shape) == (1, 768, 600) and image.meta["reduced_from"] == (1536, 1200)


@pytest.mark.parametrize(
    ("shape", "dtype", "k"),
    [
        ((301, 250), np.uint16, 2),
        ((300, 251), np.int16, 3),
        ((97, 101), np.uint8, 5),
        ((64, 64), np.uint16, 4),
        ((50, 77), np.int32, 7),
    ],
    ids=str,
)
def test_block_mean_is_the_rounded_mean_of_each_padded_block(shape, dtype, k):
    info = np.iinfo(dtype)
    arr = np.random.default_rng(k).integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    padded = np.pad(arr, ((0, -shape[0] % k), (0, -shape[1] % k)), mode="edge").astype(np.int64)
    blocks = padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k)
    expected = (blocks.sum(axis=(1, 3)) + k * k // 2) // (k * k)
    got = block_mean(arr, k)
    assert got.dtype == arr.dtype
    np.testing.assert_array_equal(got, expected.astype(dtype))
