"""The fastest decoder first (pipeline.io.decoders): pydicom's values (lossy: a few units off)."""

from __future__ import annotations

import subprocess

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

from pipeline.io import decoders
from pipeline.io.convert import DicomVariant, build_dicom, write_dicom
from pipeline.io.dicom import decode_stored
from tests.conftest import dcmtk

SV1, PROCESS_14, EXTENDED = (
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.51",
)


def _stored(pixels: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """A real radiograph at ``bits`` of precision, low bits filled (not just a shifted 8-bit)."""
    wide = pixels.astype(np.int64) << max(0, bits - 8)
    wide |= np.arange(pixels.size).reshape(pixels.shape) % (1 << max(0, bits - 8))
    wide >>= max(0, 8 - bits)
    return wide - (1 << (bits - 1)) if signed else wide


def _dataset(pixels: np.ndarray, bits: int, signed: bool = False, predictor: int = 1) -> Dataset:
    stored = _stored(pixels, bits, signed)
    allocated = 8 if bits <= 8 else 16
    # the codestream holds the bit pattern of the stored values, unsigned, at ``bits``
    pattern = (stored & ((1 << bits) - 1)).astype(np.uint8 if allocated == 8 else np.uint16)
    frame = imagecodecs.jpeg8_encode(
        pattern, lossless=True, predictor=predictor, bitspersample=bits
    )
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = SV1 if predictor == 1 else PROCESS_14
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return ds


def _pydicoms_own(ds: Dataset) -> np.ndarray:
    """What pydicom's first decoder of the JPEG family (pylibjpeg-libjpeg) gives."""
    ds.pixel_array_options(decoding_plugin="pylibjpeg")
    try:
        return ds.pixel_array.copy()
    finally:
        ds.pixel_array_options()


def _counted(monkeypatch, owner: object, name: str) -> list[int]:
    """A list that grows by one at each call of ``owner.name`` (patched for the test)."""
    calls, real = [], getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.fixture
def turbo_calls(monkeypatch) -> list[int]:
    """Counts libjpeg-turbo's decodes."""
    return _counted(monkeypatch, imagecodecs, "jpeg8_decode")


@pytest.mark.parametrize(
    ("bits", "signed", "predictor"),
    [
        (12, False, 1),
        (16, False, 1),
        (8, False, 1),
        (10, False, 1),
        (15, False, 1),
        (12, True, 1),
        (16, True, 1),
        (12, False, 4),
        (16, False, 7),
        (10, True, 2),
    ],
)
def test_the_same_values_as_pydicoms_own_decoder(pixels, turbo_calls, bits, signed, predictor):
    """Before, every JPEG Lossless frame went through pylibjpeg-libjpeg (~5 x slower)."""
    part = pixels[:509, :397]  # odd sizes
    expected = _pydicoms_own(_dataset(part, bits, signed, predictor))
    got = decode_stored(_dataset(part, bits, signed, predictor), "x.dcm")
    assert turbo_calls, "libjpeg-turbo did not decode the frame"
    assert got.dtype == expected.dtype and got.shape == expected.shape == (509, 397)
    np.testing.assert_array_equal(got, expected)
    assert np.array_equal(got, _stored(pixels[:509, :397], bits, signed))


@pytest.mark.parametrize("codec", ["jpeg", "jpeg-ls"])
def test_eight_bit_frames_in_sixteen_bits_allocated(pixels, codec):
    """The codec gives uint8 samples: widened to the Bits Allocated pydicom expects."""
    part = pixels[:509, :397]
    ds = _dataset(part, 8) if codec == "jpeg" else _jpeg_ls(part, 8)
    ds.BitsAllocated = 16
    got = decode_stored(ds, "x.dcm")
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, _stored(part, 8, False))


@pytest.mark.parametrize("signed", [False, True])
def test_an_unsigned_frame_is_decoded_without_pydicoms_buffers(
    pixels, monkeypatch, turbo_calls, signed
):
    """~9 ms less CPU a 2048² frame: the codec's array is the result (signed values keep
    pydicom's sign handling, through the plugin)."""
    direct, real = [], decoders.decode_direct
    monkeypatch.setattr(decoders, "decode_direct", lambda ds: direct.append(real(ds)) or direct[-1])
    got = decode_stored(_dataset(pixels, 12, signed), "x.dcm")
    assert (direct[0] is not None) == (not signed)
    assert len(turbo_calls) == 1  # decoded once either way
    np.testing.assert_array_equal(got, _stored(pixels, 12, signed))
    assert got.dtype == (np.int16 if signed else np.uint16)


@pytest.mark.parametrize("codec", ["jpeg", "jpeg-ls"])
def test_bits_above_bits_stored_are_cleared_as_pydicom_clears_them(pixels, codec):
    """A 16-bit codestream under Bits Stored 12 (junk in the 4 high bits, as some modalities
    write overlays there): the direct decode gives what pydicom gives (JPEG: cleared by its
    unused-bit step; JPEG-LS: left as they are, as pydicom leaves them)."""
    part = pixels[:509, :397]
    ds = _dataset(part, 16) if codec == "jpeg" else _jpeg_ls(part, 16)
    ds.BitsStored, ds.HighBit = 12, 11
    expected = _pydicoms_own(ds)
    got = decode_stored(ds, "x.dcm")
    assert decoders.decode_direct(ds) is not None  # the direct path took it
    np.testing.assert_array_equal(got, expected)
    assert (got.max() < 4096) == (codec == "jpeg") and _stored(part, 16, False).max() >= 4096


def test_a_stream_libjpeg_turbo_refuses_goes_to_pydicoms_decoder(pixels, monkeypatch):
    ds, expected = _dataset(pixels, 12), _pydicoms_own(_dataset(pixels, 12))

    def refuse(*args, **kwargs):
        raise imagecodecs.JpegError("refused")  # what imagecodecs raises for a bad stream

    monkeypatch.setattr(imagecodecs, "jpeg8_decode", refuse)
    np.testing.assert_array_equal(decode_stored(ds, "x.dcm"), expected)


def test_without_imagecodecs_pydicoms_decoder_decodes(pixels, monkeypatch):
    ds, expected = _dataset(pixels, 12), _pydicoms_own(_dataset(pixels, 12))
    monkeypatch.setattr(decoders, "plugin_for", lambda ds: None)
    monkeypatch.setattr(decoders.importlib.util, "find_spec", lambda name: None)
    assert not decoders.is_available(SV1)
    np.testing.assert_array_equal(decode_stored(ds, "x.dcm"), expected)


def test_only_monochrome_jpeg_takes_the_libjpeg_turbo_plugin(pixels):
    ds = _dataset(pixels, 12)
    assert decoders.plugin_for(ds) == decoders.LABEL
    ds.SamplesPerPixel = 3
    assert decoders.plugin_for(ds) is None
    ds.SamplesPerPixel = 1
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # JPEG 2000: pydicom's order
    assert decoders.plugin_for(ds) is None


def test_a_frame_of_another_size_is_refused(pixels):
    ds = _dataset(pixels, 12)
    ds.Rows = ds.Rows - 2

    class Runner:
        samples_per_pixel, rows, columns, bits_allocated = 1, ds.Rows, ds.Columns, 16
        transfer_syntax = ds.file_meta.TransferSyntaxUID

    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    with pytest.raises(ValueError, match="decodes to"):
        decoders.decode_frame(frame, Runner())


DCMCJPEG = dcmtk("dcmcjpeg")


@pytest.mark.skipif(DCMCJPEG is None, reason="dcmtk's dcmcjpeg is not installed (make test-deps)")
@pytest.mark.parametrize(
    "variant",
    [
        DicomVariant.MONO2_8BIT,
        DicomVariant.RESCALE_12BIT,
        DicomVariant.RESCALE_WINDOW_14BIT,
        DicomVariant.MONO2_16BIT,
    ],
    ids=str,
)
@pytest.mark.parametrize("mode", [["+e1"], ["+el", "+sv", "6"]], ids=["sv1", "predictor-6"])
def test_files_dcmtk_compressed_decode_to_their_stored_values(
    tmp_path, pixels, turbo_calls, variant, mode
):
    """Another encoder than libjpeg-turbo's (DCMTK's IJG-based one, as many PACS write)."""
    source = write_dicom(build_dicom(pixels, variant, name="case"), tmp_path / "in.dcm")
    packed = tmp_path / "out.dcm"
    subprocess.run([DCMCJPEG, *mode, str(source), str(packed)], check=True, timeout=60)
    ds = pydicom.dcmread(packed)
    assert ds.file_meta.TransferSyntaxUID in decoders.SYNTAXES
    got = decode_stored(ds, packed)
    assert turbo_calls
    np.testing.assert_array_equal(got, pydicom.dcmread(source).pixel_array)
    np.testing.assert_array_equal(got, _pydicoms_own(pydicom.dcmread(packed)))


def _jpeg_ls(pixels: np.ndarray, bits: int, signed: bool = False, error: int = 0) -> Dataset:
    """A JPEG-LS dataset of a real radiograph at ``bits`` (near-lossless with ``error``)."""
    stored = _stored(pixels, bits, signed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
    dtype = f"{'i' if signed else 'u'}{ds.BitsAllocated // 8}"
    ds.PixelData = stored.astype(dtype).tobytes()
    syntax = "1.2.840.10008.1.2.4.81" if error else "1.2.840.10008.1.2.4.80"
    options = {"jls_error": error} if error else {}
    ds.compress(syntax, encoding_plugin="pyjpegls", **options)
    return ds


@pytest.fixture
def charls_calls(monkeypatch) -> list[int]:
    """Counts CharLS's decodes through imagecodecs (this project's plugin)."""
    return _counted(monkeypatch, imagecodecs, "jpegls_decode")


@pytest.fixture
def pyjpegls_calls(monkeypatch) -> list[int]:
    """Counts pyjpegls' decodes (pydicom's own JPEG-LS plugin)."""
    import jpeg_ls

    return _counted(monkeypatch, jpeg_ls, "decode_pixel_data")


@pytest.mark.parametrize(
    ("bits", "signed", "error"),
    [(8, False, 0), (12, False, 0), (16, False, 0), (12, True, 0), (8, True, 0), (12, False, 3)],
)
def test_jpeg_ls_is_decoded_by_imagecodecs_charls_first(
    pixels, charls_calls, pyjpegls_calls, bits, signed, error
):
    """Before, pydicom tried pylibjpeg-libjpeg first (~3 x slower), then pyjpegls (~1.2 x)."""
    part = pixels[:509, :397]
    expected = _pydicoms_own(_jpeg_ls(part, bits, signed, error))
    got = decode_stored(_jpeg_ls(part, bits, signed, error), "x.dcm")
    assert charls_calls, "imagecodecs' CharLS did not decode the frame"
    assert not pyjpegls_calls
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    if not error:
        assert np.array_equal(got, _stored(part, bits, signed))


def test_a_jpeg_ls_stream_imagecodecs_refuses_goes_to_pydicoms_decoders(pixels, monkeypatch):
    ds, expected = _jpeg_ls(pixels, 12), _pydicoms_own(_jpeg_ls(pixels, 12))
    refusals = []

    def refuse(*args, **kwargs):
        refusals.append(1)
        raise ValueError("refused")

    monkeypatch.setattr(imagecodecs, "jpegls_decode", refuse)
    np.testing.assert_array_equal(decode_stored(ds, "x.dcm"), expected)
    assert refusals, "imagecodecs was not tried first"


def test_without_imagecodecs_jpeg_ls_goes_to_pyjpegls_not_pydicoms_order(
    pixels, monkeypatch, pyjpegls_calls
):
    """pydicom's own order tries pylibjpeg-libjpeg first (~3 x slower than CharLS)."""
    ds, expected = _jpeg_ls(pixels, 12), _pydicoms_own(_jpeg_ls(pixels, 12))
    real = decoders._installed
    monkeypatch.setattr(
        decoders,
        "_installed",
        lambda syntax, plugin: plugin != decoders.LABEL and real(syntax, plugin),
    )
    assert decoders.plugin_for(ds) == "pyjpegls"
    np.testing.assert_array_equal(decode_stored(ds, "x.dcm"), expected)
    assert pyjpegls_calls


def test_a_preferred_plugin_not_installed_leaves_pydicoms_order(pixels, monkeypatch):
    ds, expected = _jpeg_ls(pixels, 12), _pydicoms_own(_jpeg_ls(pixels, 12))
    monkeypatch.setattr(decoders, "_installed", lambda syntax, plugin: False)
    assert decoders.plugin_for(ds) is None
    np.testing.assert_array_equal(decode_stored(ds, "x.dcm"), expected)


def _lossy(pixels: np.ndarray, bits: int) -> Dataset:
    """A JPEG Extended (12-bit) or Baseline (8-bit) dataset of a real radiograph."""
    ds = _dataset(pixels, bits)  # the attributes; the frame is replaced
    stored = _stored(pixels, bits, False).astype(np.uint8 if bits == 8 else np.uint16)
    ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(stored, level=90, bitspersample=bits)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = EXTENDED if bits > 8 else "1.2.840.10008.1.2.4.50"
    return ds


def test_jpeg_extended_12_bit_is_decoded_by_libjpeg_turbo(pixels, turbo_calls):
    """Before, pylibjpeg-libjpeg (~3 x slower). Lossy decoders may differ by a unit or two."""
    part = pixels[:509, :397]
    expected = _pydicoms_own(_lossy(part, 12))
    got = decode_stored(_lossy(part, 12), "x.dcm")
    assert turbo_calls
    assert got.dtype == expected.dtype == np.uint16 and got.shape == expected.shape
    difference = np.abs(got.astype(np.int64) - expected)
    assert difference.max() <= 4 and (difference > 0).mean() < 0.2
    assert np.abs(got.astype(np.int64) - _stored(part, 12, False)).mean() < 8  # level 90


def test_jpeg_baseline_in_full_is_decoded_by_pillow(pixels, monkeypatch):
    """Before, pylibjpeg-libjpeg first (4.4 against 1.4 ms at 512² here)."""
    from PIL import Image

    calls = _counted(monkeypatch, Image, "open")
    expected = _pydicoms_own(_lossy(pixels, 8))
    got = decode_stored(_lossy(pixels, 8), "x.dcm")
    assert calls, "Pillow did not decode the frame"
    assert got.dtype == expected.dtype == np.uint8
    assert np.abs(got.astype(np.int64) - expected).max() <= 2
