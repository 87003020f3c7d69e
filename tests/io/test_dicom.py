"""DICOM decoding: every encoding and grayscale path gives the PNG back; bad input is typed."""

from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from pipeline.io import (
    DecodeError,
    EmptyImageError,
    InputError,
    LateralViewError,
    MultiFrameError,
    NoPixelDataError,
    NotAnImageError,
    TruncatedFileError,
    UnsupportedSOPClassError,
    read_cxr,
)
from pipeline.io.convert import DicomVariant, build_dicom, write_dicom
from tests.conftest import with_raw_value, write_raw_dataset


def _expected(variant: DicomVariant, p: np.ndarray) -> np.ndarray:
    """What the decoder must return, computed independently from the stored values."""
    p = p.astype(np.float64)
    if variant in (
        DicomVariant.RESCALE_12BIT,
        DicomVariant.JPEG2000,
        DicomVariant.JPEG_LOSSLESS,
        DicomVariant.DX_MONO1_INVERSE,
    ):
        return p * 16 / 4095  # 12-bit values scaled by the 12-bit range
    if variant is DicomVariant.VOI_LUT:
        lut = np.rint(65535 * (np.arange(4096) / 4095) ** 0.6)
        return lut[(p * 16).astype(int)] / 65535
    if variant is DicomVariant.SIGMOID:
        return 1 / (1 + np.exp(-4 * (p * 16 - 2048) / 2048))
    return p / 255


LOSSLESS = [v for v in DicomVariant if v is not DicomVariant.JPEG_BASELINE]


def _write(tmp_path: Path, ds: Dataset, name: str = "x.dcm") -> Path:
    return write_dicom(ds, tmp_path / name)


@pytest.mark.parametrize("variant", LOSSLESS, ids=str)
def test_lossless_variants_decode_to_the_png(tmp_path, pixels, variant):
    path = _write(tmp_path, build_dicom(pixels, variant, name="case"))
    image, meta = read_cxr(path)
    assert image.shape == pixels.shape  # rows x columns, never the transpose
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, _expected(variant, pixels), atol=2e-6)
    assert meta["original_shape"] == pixels.shape


def test_nonlinear_voi_lut_keeps_the_picture(tmp_path, pixels):
    image, meta = read_cxr(_write(tmp_path, build_dicom(pixels, DicomVariant.VOI_LUT)))
    assert meta["voi"] == "VOI LUT Sequence (gamma 0.6)"
    # monotone LUT: ranks are kept exactly, linear correlation stays high
    ranks = np.argsort(np.argsort(image.ravel(), kind="stable"), kind="stable")
    expected = np.argsort(np.argsort(pixels.ravel(), kind="stable"), kind="stable")
    assert np.corrcoef(ranks, expected)[0, 1] > 0.999
    assert np.corrcoef(image.ravel(), pixels.ravel())[0, 1] > 0.97


def test_jpeg_baseline_is_close(tmp_path, pixels):
    image, _ = read_cxr(_write(tmp_path, build_dicom(pixels, DicomVariant.JPEG_BASELINE)))
    assert np.corrcoef(image.ravel(), pixels.ravel())[0, 1] > 0.999
    assert np.abs(image - pixels / 255).mean() < 0.01


@pytest.mark.parametrize(
    "variant", [DicomVariant.MONO1_WINDOW, DicomVariant.DX_MONO1_INVERSE], ids=str
)
def test_monochrome1_comes_out_with_dark_lungs(tmp_path, pixels, lung_mask, variant):
    ds = build_dicom(pixels, variant)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    stored = ds.pixel_array.astype(float)
    assert stored[lung_mask].mean() > stored[~lung_mask].mean()  # stored: lungs bright
    image, meta = read_cxr(_write(tmp_path, ds))
    assert meta["inverted"] is True
    assert image[lung_mask].mean() < image[~lung_mask].mean() - 0.1  # decoded: lungs dark


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted"),
    [
        ("MONOCHROME1", None, True),
        ("MONOCHROME1", "INVERSE", True),
        ("MONOCHROME1", "IDENTITY", False),
        ("MONOCHROME2", None, False),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME2", "INVERSE", True),
    ],
)
def test_presentation_lut_shape_rule(tmp_path, pixels, photometric, shape, inverted):
    ds = build_dicom(pixels, DicomVariant.MONO2_8BIT)
    ds.PhotometricInterpretation = photometric
    if shape:
        ds.PresentationLUTShape = shape
    image, meta = read_cxr(_write(tmp_path, ds))
    assert meta["inverted"] is inverted
    expected = pixels / 255
    np.testing.assert_allclose(image, 1 - expected if inverted else expected, atol=1e-6)


def test_bits_stored_masks_unused_high_bits(tmp_path, pixels):
    ds = build_dicom(pixels, DicomVariant.RESCALE_12BIT)
    clean, _ = read_cxr(_write(tmp_path, ds, "clean.dcm"))
    ds.PixelData = (ds.pixel_array | 0xF000).astype(np.uint16).tobytes()  # overlay bits set
    dirty, _ = read_cxr(_write(tmp_path, ds, "dirty.dcm"))
    np.testing.assert_array_equal(dirty, clean)


def _two_windows(pixels: np.ndarray) -> Dataset:
    ds = build_dicom(pixels, DicomVariant.MONO2_8BIT)
    ds.WindowCenter, ds.WindowWidth = [128, 64], [256, 128]
    return ds


def test_voi_index_selects_the_window(tmp_path, pixels):
    path = _write(tmp_path, _two_windows(pixels))
    first, m0 = read_cxr(path)
    second, m1 = read_cxr(path, voi_index=1)
    assert m0["voi"].startswith("window C=128 W=256") and m1["voi"].startswith("window C=64 W=128")
    np.testing.assert_allclose(first, pixels / 255, atol=1e-6)  # [0, 255] window is identity
    assert (second == 1.0).mean() > (first == 1.0).mean()  # narrower window saturates more
    none, _ = read_cxr(path, voi="none")
    np.testing.assert_allclose(none, pixels / 255, atol=1e-6)


def test_voi_errors_name_the_file_and_the_allowed_values(tmp_path, pixels):
    path = _write(tmp_path, _two_windows(pixels))
    with pytest.raises(InputError, match=r"x\.dcm.*index 2 is out of range; the file has 2"):
        read_cxr(path, voi_index=2)
    with pytest.raises(InputError, match="no VOI LUT Sequence"):
        read_cxr(path, voi="lut")
    with pytest.raises(ValueError, match="auto, lut, window, none"):
        read_cxr(path, voi="gamma")


def test_voi_lut_wins_over_window_in_auto_and_window_is_selectable(tmp_path, pixels):
    path = _write(tmp_path, build_dicom(pixels, DicomVariant.VOI_LUT))
    _, auto = read_cxr(path)
    window, meta = read_cxr(path, voi="window")
    assert auto["voi"].startswith("VOI LUT Sequence")
    assert meta["voi"].startswith("window C=2048 W=4096")
    np.testing.assert_allclose(window, pixels.astype(float) * 16 / 4095, atol=1e-6)


def test_metadata_carries_uids_spacing_and_view(tmp_path, pixels):
    ds = build_dicom(pixels, DicomVariant.MONO2_8BIT, name="abc", spacing_mm=0.7)
    _, meta = read_cxr(_write(tmp_path, ds))
    assert meta["sop_instance_uid"] == ds.SOPInstanceUID
    assert meta["study_instance_uid"] == ds.StudyInstanceUID
    assert meta["series_instance_uid"] == ds.SeriesInstanceUID
    assert meta["pixel_spacing"] == (0.7, 0.7)
    assert meta["pixel_spacing_source"] == "ImagerPixelSpacing"
    assert meta["view_position"] == "PA" and meta["patient_orientation"] == "L\\F"
    ds.PixelSpacing = [0.5, 0.6]  # calibrated spacing wins
    _, meta = read_cxr(_write(tmp_path, ds))
    assert meta["pixel_spacing"] == (0.5, 0.6) and meta["pixel_spacing_source"] == "PixelSpacing"
    del ds.PixelSpacing, ds.ImagerPixelSpacing
    _, meta = read_cxr(_write(tmp_path, ds))
    assert np.isnan(meta["pixel_spacing"]).all() and meta["pixel_spacing_source"] == "none"


@pytest.mark.parametrize(
    "text", ["0.2", "0.2,0.2", "0\\0", "0.2\\0.2\\0.2", "abc\\def", "inf\\1", "nan\\nan", ""]
)
def test_a_malformed_pixel_spacing_falls_back_to_the_imager_spacing_or_none(tmp_path, pixels, text):
    """Real files carry one value, three, a comma, zeros... One value used to fail the whole
    image (TypeError), text too (ValueError), and an infinity gave infinite areas."""
    ds = with_raw_value(
        build_dicom(pixels, DicomVariant.MONO2_8BIT, spacing_mm=0.7), "PixelSpacing", text
    )
    image, meta = read_cxr(_write(tmp_path, ds))
    assert meta["pixel_spacing"] == (0.7, 0.7)
    assert meta["pixel_spacing_source"] == "ImagerPixelSpacing"
    with_raw_value(ds, "ImagerPixelSpacing", text)
    again, meta = read_cxr(_write(tmp_path, ds))
    assert np.isnan(meta["pixel_spacing"]).all() and meta["pixel_spacing_source"] == "none"
    np.testing.assert_array_equal(again, image)


@pytest.mark.parametrize(
    ("attrs", "spacing", "source"),
    [
        ({}, 0.7, "ImagerPixelSpacing"),  # nothing to correct with: the detector's
        ({"EstimatedRadiographicMagnificationFactor": "1.12"}, 0.625, "ERMF"),
        ({"DistanceSourceToDetector": "1800", "DistanceSourceToPatient": "1600"}, 0.7 / 1.125, "D"),
        (  # the estimate wins over the distances
            {
                "EstimatedRadiographicMagnificationFactor": "1.4",
                "DistanceSourceToDetector": "1800",
                "DistanceSourceToPatient": "1600",
            },
            0.5,
            "ERMF",
        ),
        ({"EstimatedRadiographicMagnificationFactor": "0.5"}, 0.7, "ImagerPixelSpacing"),
        ({"EstimatedRadiographicMagnificationFactor": "abc"}, 0.7, "ImagerPixelSpacing"),
        (
            {"DistanceSourceToDetector": "1800", "DistanceSourceToPatient": "0"},
            0.7,
            "ImagerPixelSpacing",
        ),
        (
            {"PixelSpacing": "0.7\\0.7", "EstimatedRadiographicMagnificationFactor": "1.12"},
            0.625,
            "ERMF",
        ),
        (
            {"PixelSpacing": "0.6\\0.6", "EstimatedRadiographicMagnificationFactor": "1.12"},
            0.6,
            "PixelSpacing",
        ),
    ],
)
def test_the_detector_spacing_is_brought_to_the_patient_by_the_magnification(
    tmp_path, pixels, attrs, spacing, source
):
    """Imager Pixel Spacing is at the detector, where a PA chest is ~1.1-1.2 x magnified:
    used as it was, lung areas in mm² came out ~1.2-1.4 x too large where the file said by
    how much (DICOM PS3.3 10.7.1.1). A Pixel Spacing equal to it is the detector's too; one
    that differs is calibrated and wins."""
    names = {
        "ERMF": "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor",
        "D": "ImagerPixelSpacing*DistanceSourceToPatient/DistanceSourceToDetector",
    }
    ds = build_dicom(pixels, DicomVariant.MONO2_8BIT, spacing_mm=0.7)
    for keyword, text in attrs.items():
        with_raw_value(ds, keyword, text)
    _, meta = read_cxr(_write(tmp_path, ds))
    assert meta["pixel_spacing"] == pytest.approx((spacing, spacing))
    assert meta["pixel_spacing_source"] == names.get(source, source)


@pytest.mark.parametrize(
    ("center", "width", "function", "why"),
    [
        ("abc", "256", "LINEAR", "not numbers"),
        ("128", "0", "LINEAR", "the width must be >= 1"),
        ("", "", "LINEAR", "empty"),
        ("128", "256", "GAMMA", "'GAMMA' is none of LINEAR, LINEAR_EXACT, SIGMOID"),
    ],
)
def test_an_unusable_window_is_skipped_in_auto_and_named_when_asked_for(
    tmp_path, pixels, center, width, function, why
):
    """A window that cannot be applied used to fail the image (a TypeError for text); with
    ``--voi auto`` the image is read without it and its ``voi`` says why."""
    ds = build_dicom(pixels, DicomVariant.MONO2_8BIT)
    for keyword, text in (("WindowCenter", center), ("WindowWidth", width)):
        with_raw_value(ds, keyword, text)
    ds.VOILUTFunction = function
    path = _write(tmp_path, ds)
    image, meta = read_cxr(path)
    assert meta["voi"].startswith("none (the window cannot be applied: ") and why in meta["voi"]
    np.testing.assert_allclose(image, pixels / 255, atol=1e-6)
    with pytest.raises(InputError, match=r"x\.dcm.*'window' was asked for but it cannot be"):
        read_cxr(path, voi="window")


@pytest.mark.parametrize(
    ("mend", "assumed"),
    [
        (lambda ds: delattr(ds, "PhotometricInterpretation"), "MONOCHROME2 (the file has '')"),
        (
            lambda ds: with_raw_value(ds, "PhotometricInterpretation", "monochrome2"),
            "'monochrome2'",
        ),
        (
            lambda ds: with_raw_value(ds, "PhotometricInterpretation", "MONOCHROME 2"),
            "MONOCHROME2 (the file has 'MONOCHROME 2')",
        ),
        (
            lambda ds: with_raw_value(ds, "PhotometricInterpretation", "GRAYSCALE"),
            "MONOCHROME2 (the file has 'GRAYSCALE')",
        ),
        (lambda ds: delattr(ds, "SamplesPerPixel"), "SamplesPerPixel 1 (absent)"),
        (lambda ds: delattr(ds, "PixelRepresentation"), "PixelRepresentation 0 (absent)"),
        (lambda ds: delattr(ds, "BitsStored"), "BitsStored 16 (absent)"),
        (lambda ds: setattr(ds, "BitsStored", 20), "BitsStored 16 (the file has 20"),
        (lambda ds: with_raw_value(ds, "NumberOfFrames", "abc"), "one frame"),
    ],
)
def test_image_pixel_attributes_real_exports_leave_out_are_assumed_and_said(
    tmp_path, pixels, mend, assumed
):
    """pydicom refused these pixels ("Missing required element", "Unknown Photometric
    Interpretation"); a viewer shows them, and so does lungseg, saying what it assumed."""
    ds = build_dicom(pixels, DicomVariant.MONO2_16BIT)
    expected, meta = read_cxr(_write(tmp_path, ds, "good.dcm"))
    assert meta["assumed"] == ""
    mend(ds)
    image, meta = read_cxr(_write(tmp_path, ds))
    np.testing.assert_array_equal(image, expected)
    assert assumed in meta["assumed"]


@pytest.mark.parametrize(
    ("slope", "intercept"), [("0", "0"), ("inf", "0"), ("abc", "0"), ("1", ""), ("2\\3", "0")]
)
def test_an_unusable_rescale_is_left_out_and_said(tmp_path, pixels, slope, intercept):
    """Slope 0 made every pixel the same and an infinity every pixel NaN, silently; text
    failed the image and an empty value raised a TypeError."""
    ds = build_dicom(pixels, DicomVariant.MONO2_16BIT)
    expected, _ = read_cxr(_write(tmp_path, ds, "good.dcm"))
    with_raw_value(with_raw_value(ds, "RescaleSlope", slope), "RescaleIntercept", intercept)
    image, meta = read_cxr(_write(tmp_path, ds))
    np.testing.assert_array_equal(image, expected)
    assert meta["assumed"] == (
        f"no rescale (the file's Rescale Slope {slope!r}, Intercept {intercept!r})"
    )


@pytest.mark.parametrize(
    ("implicit", "little", "syntax"),
    [
        (True, True, "Implicit VR Little Endian"),
        (False, True, "Explicit VR Little Endian"),
        (False, False, "Explicit VR Big Endian"),
    ],
)
def test_a_dataset_without_file_meta_is_read_in_the_encoding_of_its_header(
    tmp_path, pixels, implicit, little, syntax
):
    """Such a file was read but its pixels refused ("'file_meta' has no (0002,0010) 'Transfer
    Syntax UID' element"): a failed row for every raw dataset of an old archive."""
    expected, _ = read_cxr(_write(tmp_path, build_dicom(pixels, DicomVariant.MONO2_16BIT), "a.dcm"))
    ds = build_dicom(pixels, DicomVariant.MONO2_16BIT)
    image, meta = read_cxr(write_raw_dataset(ds, tmp_path / "raw", implicit, little))
    np.testing.assert_array_equal(image, expected)
    assert meta["assumed"] == f"{syntax} (no Transfer Syntax UID: read as the header is encoded)"


def test_compressed_pixels_without_a_transfer_syntax_name_the_reason(tmp_path, pixels):
    ds = build_dicom(pixels, DicomVariant.RLE)
    with pytest.raises(DecodeError, match=r"raw: pixel data is compressed .* no Transfer Syntax"):
        read_cxr(write_raw_dataset(ds, tmp_path / "raw", implicit=False, little=True))


def test_same_name_gives_same_uids(pixels):
    a, b = build_dicom(pixels, name="n"), build_dicom(pixels, name="n")
    assert a.SOPInstanceUID == b.SOPInstanceUID != build_dicom(pixels, name="m").SOPInstanceUID


def test_colour_image_is_reduced_to_luma_with_a_warning(tmp_path, pixels):
    ds = build_dicom(pixels, DicomVariant.RGB)
    gray, _ = read_cxr(_write(tmp_path, ds, "gray.dcm"))
    np.testing.assert_allclose(gray, pixels / 255, atol=1e-6)  # R=G=B: no loss, no warning
    rgb = ds.pixel_array.copy()
    rgb[..., 0] = 255 - rgb[..., 0]
    ds.PixelData = rgb.tobytes()
    with pytest.warns(UserWarning, match=r"colour\.dcm: colour image reduced to grayscale"):
        image, _ = read_cxr(_write(tmp_path, ds, "colour.dcm"))
    expected = (0.299 * (255 - pixels.astype(float)) + 0.701 * pixels) / 255
    np.testing.assert_allclose(image, expected, atol=1e-5)


def test_dicom_is_recognised_by_content_not_name(tmp_path, pixels):
    path = _write(tmp_path, build_dicom(pixels), "IM000001")
    image, meta = read_cxr(path)
    assert meta["format"] == "DICOM" and image.shape == pixels.shape


# --- bad input -------------------------------------------------------------------------


def _sr_dataset() -> Dataset:
    ds = build_dicom(np.zeros((4, 4), np.uint8))
    for keyword in [e.keyword for e in ds if e.tag.group == 0x0028] + ["PixelData"]:
        delattr(ds, keyword)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    ds.Modality = "SR"
    return ds


def test_structured_report_is_skipped_as_unsupported_sop_class(tmp_path):
    path = _write(tmp_path, _sr_dataset(), "sr.dcm")
    with pytest.raises(
        UnsupportedSOPClassError, match=r"sr\.dcm: SOP class 'Comprehensive SR Storage'"
    ) as err:
        read_cxr(path)
    assert err.value.status == "skipped"
    assert "Computed Radiography Image Storage" in err.value.reason  # the allowed set is named


def test_segmentation_object_is_unsupported(tmp_path, pixels):
    ds = build_dicom(pixels)
    ds.SOPClassUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.66.4", "SEG"
    with pytest.raises(UnsupportedSOPClassError, match="Segmentation Storage"):
        read_cxr(_write(tmp_path, ds))


def test_no_pixel_data(tmp_path, pixels):
    ds = build_dicom(pixels)
    del ds.PixelData
    with pytest.raises(NoPixelDataError, match="no Pixel Data"):
        read_cxr(_write(tmp_path, ds))


def test_multi_frame_is_skipped(tmp_path, pixels):
    ds = build_dicom(pixels)
    ds.set_pixel_data(np.stack([pixels, pixels]), "MONOCHROME2", 8, generate_instance_uid=False)
    with pytest.raises(MultiFrameError, match="2 frames") as err:
        read_cxr(_write(tmp_path, ds))
    assert err.value.status == "skipped"


@pytest.mark.parametrize(
    ("sop_class", "error"),
    [
        ("1.2.840.10008.5.1.4.1.1.3.1", UnsupportedSOPClassError),  # an ultrasound cine loop
        ("1.2.840.10008.5.1.4.1.1.1.1", MultiFrameError),  # a multi-frame DX
    ],
)
def test_a_large_object_is_refused_without_reading_its_pixels(tmp_path, pixels, sop_class, error):
    """Before, an archive's 200 MB cine loop was read whole (its bytes in the worker's
    memory) to be refused from its header; 60 frames of a radiograph (24 MB) here."""
    import tracemalloc

    ds = build_dicom(pixels, DicomVariant.MONO2_16BIT)
    ds.set_pixel_data(np.stack([pixels.astype(np.uint16)] * 60), "MONOCHROME2", 16)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    path = _write(tmp_path, ds)
    assert path.stat().st_size > 20 * 2**20
    tracemalloc.start()
    try:
        with pytest.raises(error):
            read_cxr(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak / 2**20:.0f} MiB allocated to refuse it"


def test_zero_size_image(tmp_path, pixels):
    ds = build_dicom(pixels)
    ds.Rows = 0
    with pytest.raises(EmptyImageError, match="0 rows"):
        read_cxr(_write(tmp_path, ds))


@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL"])
def test_lateral_view_is_skipped_unless_allowed(tmp_path, pixels, view):
    ds = build_dicom(pixels)
    ds.ViewPosition = view
    path = _write(tmp_path, ds)
    with pytest.raises(LateralViewError, match=f"lateral view \\(ViewPosition {view}\\)"):
        read_cxr(path)
    image, meta = read_cxr(path, allow_lateral=True)
    assert image.shape == pixels.shape and meta["view_position"] == view


@pytest.mark.parametrize(
    "variant", [DicomVariant.MONO2_8BIT, DicomVariant.JPEG2000, DicomVariant.JPEG_LOSSLESS], ids=str
)
def test_truncated_pixel_data(tmp_path, pixels, variant):
    data = _write(tmp_path, build_dicom(pixels, variant), "full.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 4000])
    with pytest.raises(TruncatedFileError, match=r"cut\.dcm") as err:
        read_cxr(cut)
    assert err.value.status == "failed"


def test_file_cut_after_its_header(tmp_path, pixels):
    data = _write(tmp_path, build_dicom(pixels), "full.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:300])
    with pytest.raises(TruncatedFileError, match="ends after the DICOM file meta header"):
        read_cxr(cut)


def test_corrupt_compressed_stream_is_a_decode_error(tmp_path, pixels):
    ds = build_dicom(pixels, DicomVariant.JPEG2000)
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(200)])
    with pytest.raises(DecodeError, match="JPEG 2000"):
        read_cxr(_write(tmp_path, ds))


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "file is empty"), (b"just some text\n" * 20, "not DICOM and not an image format")],
)
def test_junk_files(tmp_path, content, reason):
    path = tmp_path / "junk.dcm"
    path.write_bytes(content)
    with pytest.raises(NotAnImageError, match=f"junk\\.dcm: {reason}"):
        read_cxr(path)


def test_pydicom_bundled_files_decode_or_raise_a_typed_error():
    root = Path(pydicom.__file__).parent / "data" / "test_files"
    files = [f for f in glob.glob(str(root / "**" / "*"), recursive=True) if os.path.isfile(f)]
    assert len(files) > 50
    outcomes: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            try:
                image, _ = read_cxr(path)
            except InputError as err:
                assert err.path == path and err.reason
                outcomes[type(err).__name__] = outcomes.get(type(err).__name__, 0) + 1
            else:
                assert image.ndim == 2 and image.dtype == np.float32
                assert 0.0 <= image.min() <= image.max() <= 1.0
                outcomes["ok"] = outcomes.get("ok", 0) + 1
    # the collection holds real radiograph-like images as well as non-image objects
    assert outcomes["ok"] >= 20 and outcomes["UnsupportedSOPClassError"] >= 50
