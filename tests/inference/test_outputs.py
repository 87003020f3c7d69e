"""DICOM coding of the SEG and SR: every code checked against its context group."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes

from pipeline.inference.outputs import LEFT_LUNG, PLAIN_CHEST_XRAY, RIGHT_LUNG, seg_of, sr_of
from pipeline.io.convert import DicomVariant, build_dicom
from tests.conftest import load_png, with_raw_value

#: Codes of the SR with no context group that lists them (pydicom's tables), said on purpose:
#: precoordinated SNOMED CT right/left lung and the SNOMED procedure "Plain X-ray of chest".
#: The SEG has none.
NO_CONTEXT_GROUP = {RIGHT_LUNG[0], LEFT_LUNG[0], PLAIN_CHEST_XRAY[0]}


def _values(cid: int) -> set[str]:
    collection = getattr(codes, f"cid{cid}")
    out = set()
    for name in collection.dir():
        try:
            out.add(getattr(collection, name).value)
        except RuntimeError:  # a keyword defined in two schemes
            continue
    return out


@pytest.fixture(scope="module")
def objects(shipped_model, data_dir):
    pixels = load_png(data_dir / "images" / "MCUCXR_0001_0.png")
    source = build_dicom(pixels, DicomVariant.MONO2_16BIT, name="codes", spacing_mm=0.35)
    m = shipped_model.predict_single_npy_array(pixels, {"pixel_spacing": (0.35, 0.35)}).measures
    seg = seg_of(source, m, shipped_model.identity)
    return seg, sr_of(source, seg, m, shipped_model.identity)


def _coded(ds) -> list[tuple[str, str]]:
    """``(keyword, code value)`` of every code sequence item in a dataset tree."""
    out = []
    for elem in ds.iterall():
        if elem.VR == "SQ" and elem.keyword.endswith("CodeSequence"):
            out += [(elem.keyword, item.CodeValue) for item in elem.value if "CodeValue" in item]
    return out


def test_seg_codes_come_from_their_context_groups(objects):
    seg, _ = objects
    for segment in seg.SegmentSequence:
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue in _values(7150)
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue in _values(7151)
        modifier = (
            segment.SegmentedPropertyTypeCodeSequence[0]
            .SegmentedPropertyTypeModifierCodeSequence[0]
            .CodeValue
        )
        assert modifier in _values(244)
    sides = [
        s.SegmentedPropertyTypeCodeSequence[0]
        .SegmentedPropertyTypeModifierCodeSequence[0]
        .CodeMeaning
        for s in seg.SegmentSequence
    ]
    assert sides == ["Right", "Left"]
    families = [v for k, v in _coded(seg) if k == "AlgorithmFamilyCodeSequence"]
    assert families and set(families) <= _values(7162)


def test_sr_codes_come_from_their_context_groups(objects):
    _, sr = objects
    coded = _coded(sr)
    units = {v for k, v in coded if k == "MeasurementUnitsCodeSequence"}
    names = {v for k, v in coded if k == "ConceptNameCodeSequence"}
    assert units and units <= _values(7181)
    assert codes.SCT.Area.value in names and codes.SCT.Area.value in _values(7469)
    findings = {  # DCM 121071 "Finding": the finding type of each measurement group
        item.ConceptCodeSequence[0].CodeValue
        for item in _items(sr)
        if "ConceptCodeSequence" in item and item.ConceptNameCodeSequence[0].CodeValue == "121071"
    }
    assert findings == {codes.SCT.Lung.value, RIGHT_LUNG[0], LEFT_LUNG[0]}
    assert findings <= _values(7151) | NO_CONTEXT_GROUP
    assert codes.SCT.Lung.value in _values(7151)


def _items(ds) -> list:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out += _items(item)
    return out


def test_the_objects_are_valid_dicom(objects, tmp_path):
    seg, sr = objects
    for name, ds in (("seg.dcm", seg), ("sr.dcm", sr)):
        ds.save_as(tmp_path / name, enforce_file_format=True)
        again = pydicom.dcmread(tmp_path / name)
        assert again.SOPInstanceUID == ds.SOPInstanceUID
    assert np.asarray(seg.pixel_array).any()


def _sources(case_pixels) -> list:
    """Sources that differ in every way a SEG copies or depends on."""
    sources = []
    variants = [
        DicomVariant.MONO2_16BIT,
        DicomVariant.MONO1_WINDOW,
        DicomVariant.DX_MONO1_INVERSE,  # another SOP class
        DicomVariant.JPEG_BASELINE,  # lossy: Lossy Image Compression 01
        DicomVariant.RGB,  # secondary capture
        DicomVariant.MONO2_16BIT,
    ]
    for i, (variant, (name, pixels)) in enumerate(
        zip(variants, [*case_pixels.items(), *case_pixels.items()], strict=False)
    ):
        ds = build_dicom(pixels if i != 5 else pixels[:, :400], variant, name=f"{name}{i}")
        ds.PatientName, ds.PatientBirthDate, ds.AccessionNumber = (
            f"Case^{i}",
            f"19{50 + i}0101",
            f"A{i}",
        )
        ds.InstanceNumber = 10 + i
        if i % 2:
            ds.StudyDescription, ds.PatientAge = "CHEST PA", f"0{40 + i}Y"
        if i == 2:
            del ds.StudyID  # Type 2 absent from the source
        if i == 3:
            ds.PatientOrientation = ["R", "F"]
        del ds.PixelData
        sources.extend([ds, copy.deepcopy(ds)])  # each kind twice: the second from a template
        other = sources[-1]
        other.PatientName, other.SOPInstanceUID = f"Other^{i}", f"1.2.3.{i}"
        other.SeriesInstanceUID, other.StudyInstanceUID = f"1.2.4.{i}", f"1.2.5.{i}"
        other.InstanceNumber = 100 + i
    return sources


def test_seg_from_a_template_is_byte_for_byte_highdicoms(
    case_pixels, case_masks, shipped_model, tmp_path
):
    from pipeline.inference.lungs import measure
    from pipeline.inference.outputs import (
        SegTemplates,
        _complete_type2,
        _encode_templated,
        build_seg,
        encode_dicom,
        pin_dates,
        seg_uids,
        write_seg,
    )

    templates, algorithm = SegTemplates(), shipped_model.identity.algorithm()
    encoder = SegTemplates()  # SegTemplates.encode: bytes without a dataset
    masks, fast_ones = [*case_masks.values(), *case_masks.values()], 0
    for i, source in enumerate(_sources(case_pixels)):
        mask = masks[i // 2][:, : source.Columns]
        m = measure(mask, mask.astype(np.float32), str(source.PatientOrientation))
        uids = seg_uids(str(source.SeriesInstanceUID), str(source.SOPInstanceUID), "digest")
        ours = templates.build(source, m, uids, algorithm)
        theirs = build_seg(_complete_type2(source), m, uids, algorithm)
        for seg in (ours, theirs):
            pin_dates(seg, "20260102030405")
        assert encode_dicom(ours) == encode_dicom(theirs), (i, source.PatientName)
        encoded = encoder.encode(source, m, uids, algorithm, "20260102030405")
        assert encoded == encode_dicom(theirs), (i, source.PatientName)
        fast = _encode_templated(ours)  # write_seg's encoder for SEGs from a template
        assert fast is None or fast == encode_dicom(theirs), (i, source.PatientName)
        fast_ones += fast is not None
        written = write_seg(ours, tmp_path / f"{i}.dcm")  # a Part 10 file, like highdicom's
        assert written.read_bytes() == write_seg(theirs, tmp_path / "hd.dcm").read_bytes()
        assert written.read_bytes()[128:132] == b"DICM"
    assert len(templates._templates) < len(_sources(case_pixels))  # templates were used
    assert fast_ones == len(_sources(case_pixels)) - len(templates._templates)
    assert all(entry[2] is not None for entry in encoder._templates.values())


#: The dates every SEG of these tests is pinned to.
DATES = "20260102030405"


def _assert_as_highdicom(source, m, templates, encoder, algorithm) -> bytes:
    """Both template paths give highdicom's SEG of ``source`` byte for byte; return it."""
    from pipeline.inference.outputs import (
        _complete_type2,
        build_seg,
        encode_dicom,
        pin_dates,
        seg_uids,
    )

    uids = seg_uids(str(source.SeriesInstanceUID), str(source.SOPInstanceUID), "digest")
    theirs = build_seg(_complete_type2(source), m, uids, algorithm)
    ours = templates.build(source, m, uids, algorithm)
    for seg in (ours, theirs):
        pin_dates(seg, DATES)
    expected = encode_dicom(theirs)
    assert encode_dicom(ours) == expected
    assert encoder.encode(source, m, uids, algorithm, DATES) == expected
    return expected


def _one_lung(shape: tuple[int, int], spacing: tuple[float, float] = (math.nan, math.nan)):
    """Measures of a rectangle as the right lung (left on the image)."""
    from pipeline.inference.lungs import measure

    mask = np.zeros(shape, dtype=bool)
    mask[100:300, 50:200] = True
    return measure(mask, mask.astype(np.float32), "L\\F", spacing)


def _file_bytes(source) -> bytes:
    """``source`` as a DICOM file's bytes."""
    buffer = pydicom.filebase.DicomBytesIO()
    pydicom.dcmwrite(buffer, source, enforce_file_format=True)
    return buffer.getvalue()


def _read(data: bytes):
    """The dataset of a DICOM file's bytes, as pydicom reads a file."""
    return pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))


def test_sizes_spacings_and_compression_ratios_share_a_template_yet_stay_highdicoms(
    case_pixels, case_masks, shipped_model
):
    """Projection radiographs differ from image to image in size (a detector cropped to the
    collimation), pixel spacing (a calibration) and lossy compression ratio: each used to
    cost a template of its own, i.e. highdicom's whole constructor (~20 ms)."""
    from pipeline.inference.lungs import measure
    from pipeline.inference.outputs import SegTemplates

    (name, pixels), mask = next(iter(case_pixels.items())), next(iter(case_masks.values()))
    cases = [  # (variant, rows, columns, pixel spacing, lossy ratio, method)
        (DicomVariant.MONO2_16BIT, 512, 512, ["0.143", "0.143"], None, None),
        (DicomVariant.MONO2_16BIT, 480, 400, ["0.1430", "0.1431"], None, None),
        (DicomVariant.MONO2_16BIT, 333, 401, None, None, None),  # no spacing; not whole bytes
        (DicomVariant.MONO2_16BIT, 500, 512, ["1.5e-1", "0.15"], None, None),
        (DicomVariant.MONO2_16BIT, 512, 496, ["0.2", "0.2"], None, None),
        (DicomVariant.JPEG_BASELINE, 512, 512, None, "10", "ISO_10918_1"),
        (DicomVariant.JPEG_BASELINE, 512, 512, ["0.175", "0.175"], "12.5", "ISO_10918_1"),
        (DicomVariant.JPEG_BASELINE, 512, 512, None, None, None),  # lossy, no ratio: its own
    ]
    templates, encoder = SegTemplates(), SegTemplates()
    for i, (variant, rows, cols, spacing, ratio, method) in enumerate(cases):
        source = build_dicom(pixels, variant, name=f"{name}{i}")
        del source.PixelData
        source.Rows, source.Columns = rows, cols
        source.SOPInstanceUID, source.SeriesInstanceUID = f"1.2.3.{i}", f"1.2.4.{i}"
        for keyword, value in (
            ("PixelSpacing", spacing),
            ("LossyImageCompressionRatio", ratio),
            ("LossyImageCompressionMethod", method),
        ):
            if value is not None:
                setattr(source, keyword, value)
            elif keyword in source:
                delattr(source, keyword)
        m = measure(mask[:rows, :cols], mask[:rows, :cols].astype(np.float32), "L\\F")
        _assert_as_highdicom(source, m, templates, encoder, shipped_model.identity.algorithm())
    # one template each: plain, lossy with a ratio, lossy without
    assert len(templates._templates) == len(encoder._templates) == 3


def test_sources_carrying_other_patient_and_study_attributes_share_a_template(
    case_pixels, shipped_model
):
    """Which optional patient/study attributes a file carries varies from exam to exam;
    highdicom copies those it finds. Each pattern used to cost a template of its own."""
    from pipeline.inference.outputs import SegTemplates

    pixels = next(iter(case_pixels.values()))
    templates, encoder, m = SegTemplates(), SegTemplates(), _one_lung(pixels.shape)
    extras = [
        {},
        {"PatientAge": "045Y", "StudyDescription": "CHEST PA"},
        {
            "PatientWeight": "71.5",
            "IssuerOfPatientID": "HOSP",
            "AdmittingDiagnosesDescription": "TB?",
        },
        {"StudyDescription": "CHEST AP PORTABLE"},
        {},
    ]
    for i, extra in enumerate(extras):
        source = build_dicom(pixels, DicomVariant.MONO2_16BIT, name=f"pa{i}")
        del source.PixelData
        if i == 4:
            del source.StudyID  # Type 2 absent: completed as empty, as highdicom gets it
        for keyword, value in extra.items():
            setattr(source, keyword, value)
        source.SOPInstanceUID = f"1.2.3.{i}"
        encoded = _assert_as_highdicom(
            source, m, templates, encoder, shipped_model.identity.algorithm()
        )
        again = pydicom.dcmread(pydicom.filebase.DicomBytesIO(encoded))
        assert {k: str(again.get(k)) for k in extra} == extra
    assert len(templates._templates) == len(encoder._templates) == 1


def test_sources_with_a_frame_of_reference_keep_a_template_per_spacing(case_pixels, shipped_model):
    """highdicom derives more from a source placed in the patient's space (its position
    reference indicator among them): such sources keep their spacing in the key."""
    from pipeline.inference.outputs import SegTemplates

    pixels = next(iter(case_pixels.values()))
    templates, encoder, m = SegTemplates(), SegTemplates(), _one_lung(pixels.shape)
    for i, (indicator, spacing) in enumerate(
        [("", "0.2"), ("XY", "0.2"), ("XY", "0.3"), ("XY", "0.3")]
    ):
        source = build_dicom(pixels, DicomVariant.MONO2_16BIT, name=f"for{i}")
        del source.PixelData
        source.FrameOfReferenceUID, source.PositionReferenceIndicator = "1.2.3.4", indicator
        source.PixelSpacing, source.SOPInstanceUID = [spacing, spacing], f"1.2.3.{i}"
        _assert_as_highdicom(source, m, templates, encoder, shipped_model.identity.algorithm())
    assert len(encoder._templates) == 3


def test_sources_in_other_character_sets_get_segs_in_their_own(case_pixels, shipped_model):
    """highdicom gives a SEG its source's Specific Character Set and encodes the copied
    names in it; a template made from a source in another set kept that set's: a UTF-8
    name written under the first source's repertoire."""
    from pipeline.inference.outputs import SegTemplates

    pixels = next(iter(case_pixels.values()))
    templates, encoder, m = SegTemplates(), SegTemplates(), _one_lung(pixels.shape)
    cases = [
        (None, "Plain^Name"),
        ("ISO_IR 192", "Müller^Jürgen"),
        ("ISO_IR 100", "Müller^Jürgen"),
        ("ISO_IR 192", "山田^太郎"),
        (None, "Other^Name"),
        ("ISO_IR 126", "Ανδρέου^Δημήτρης"),
        # Japanese, as PS3.5's examples write it: highdicom refused the empty first value
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎"),
    ]
    for i, (charset, name) in enumerate(cases):
        source = build_dicom(pixels, DicomVariant.MONO2_16BIT, name=f"cs{i}")
        del source.PixelData
        if charset is not None:
            source.SpecificCharacterSet = charset
        source.PatientName, source.SOPInstanceUID = name, f"1.2.3.{i}"
        encoded = _assert_as_highdicom(
            source, m, templates, encoder, shipped_model.identity.algorithm()
        )
        again = pydicom.dcmread(pydicom.filebase.DicomBytesIO(encoded))
        assert str(again.PatientName) == name
    assert len(encoder._templates) == 5  # one per character set
    assert again.SpecificCharacterSet == ["ISO 2022 IR 6", "ISO 2022 IR 87"]  # the same set


@pytest.mark.parametrize(
    ("charset", "name", "expected"),
    [
        ("ISO IR 100", "Müller^Jürgen", "ISO_IR 100"),
        ("iso_ir 144", "Иванов^Иван", "ISO_IR 144"),
        ("ISO 2022 IR 100", "Müller^Jürgen", "ISO_IR 100"),
        ("ISO_IR 6", "Plain^Name", None),
        ("", "Plain^Name", None),
        ("UTF-8", "山田^太郎", "ISO_IR 192"),
        ("cp1252", "Œuvre^Zoë", "ISO_IR 192"),  # no DICOM term: UTF-8 holds its text
    ],
)
def test_sources_with_non_standard_character_sets_get_segs_in_defined_terms(
    case_pixels, shipped_model, charset, name, expected
):
    """Real files misspell the set or use values the standard does not define; highdicom
    refused them all, so those sources had no SEG. The names read from the file's bytes
    come out as pydicom read them."""
    import warnings

    from pipeline.inference.outputs import SegTemplates

    pixels = next(iter(case_pixels.values()))
    source = build_dicom(pixels, DicomVariant.MONO2_16BIT, name="ns")
    del source.PixelData
    source.SpecificCharacterSet = charset
    source.PatientName = source.StudyDescription = name
    with warnings.catch_warnings():  # pydicom warns of the value it mends
        warnings.simplefilter("ignore")
        buffer = pydicom.filebase.DicomBytesIO()
        pydicom.dcmwrite(buffer, source, enforce_file_format=True)
        read = pydicom.dcmread(pydicom.filebase.DicomBytesIO(buffer.getvalue()))
        assert str(read.PatientName) == name  # pydicom reads the file's own value
        read = pydicom.dcmread(pydicom.filebase.DicomBytesIO(buffer.getvalue()))
        algorithm = shipped_model.identity.algorithm()
        encoded = _assert_as_highdicom(
            read, _one_lung(pixels.shape), SegTemplates(), SegTemplates(), algorithm
        )
    seg = pydicom.dcmread(pydicom.filebase.DicomBytesIO(encoded))
    assert seg.get("SpecificCharacterSet") == expected
    assert str(seg.PatientName) == name
    assert read.SpecificCharacterSet == charset  # the source is left as it was


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("StudyDate", "2023-01-31", "20230131"),
        ("PatientBirthDate", "1980.01.31", "19800131"),
        ("PatientBirthDate", "19800132", ""),  # no such day: unknown
        ("StudyTime", "10:11:12", "101112"),  # ACR-NEMA
        ("PatientSex", "Male", "M"),
        ("PatientSex", "U", ""),
        ("Modality", "cr", None),  # not copied; it names the SEG's content
        ("PatientOrientation", "XYZ", ""),  # not two directions: unknown (Type 2C)
        ("InstanceNumber", "abc", 1),  # no number: as without one
        ("PixelSpacing", "0.2", None),  # one value: no Pixel Measures, as the reader
        ("PixelSpacing", "0.2,0.2", None),
        ("LossyImageCompressionRatio", "abc", None),  # copied only when it is a number
    ],
)
def test_sources_with_malformed_checked_values_get_segs_with_them_mended(
    case_pixels, shipped_model, tmp_path, keyword, value, expected
):
    """highdicom checks the birth date, sex, study date and time it is given and names the
    content after the modality: real files' ``2023-01-31``, ``10:11:12``, ``Male`` or ``cr``
    made it refuse the source, so those sources had no SEG and no SR."""
    import shutil
    import subprocess

    from pipeline.inference.outputs import SegTemplates

    pixels = next(iter(case_pixels.values()))
    source = build_dicom(pixels, DicomVariant.MONO2_16BIT, name="mv", spacing_mm=0.35)
    del source.PixelData
    if keyword == "LossyImageCompressionRatio":
        source.LossyImageCompression = "01"
    with_raw_value(source, keyword, value)
    read = _read(_file_bytes(source))
    m = _one_lung(pixels.shape, (0.35, 0.35))
    algorithm = shipped_model.identity.algorithm()
    encoded = _assert_as_highdicom(read, m, SegTemplates(), SegTemplates(), algorithm)
    seg = pydicom.dcmread(pydicom.filebase.DicomBytesIO(encoded))
    if keyword == "Modality":
        assert seg.ContentLabel == "CR_SEG"
    elif keyword == "PixelSpacing":
        assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]
    else:
        assert seg.get(keyword) == expected
    assert read.get_item(keyword).value.rstrip(b" ") == value.encode()  # the source untouched
    sr = sr_of(read, seg, m, shipped_model.identity)
    if (exe := shutil.which("dciodvfy")) is not None:
        for kind, ds in (("seg", seg), ("sr", sr)):
            path = tmp_path / f"{kind}.dcm"
            ds.save_as(path, enforce_file_format=True)
            proc = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True)
            errors = [x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("Error")]
            assert not errors, f"{kind}: {errors}"


@pytest.mark.parametrize(
    ("charset", "name"), [(None, "DOE^JOHN\\DOE^J"), ("ISO_IR 100", "Müller^Jürgen\\Müller^J")]
)
def test_a_patient_name_written_as_two_names_is_carried_as_the_file_writes_it(
    case_pixels, shipped_model, charset, name
):
    """A name with a backslash is two values to pydicom, which highdicom refused (``Invalid
    type for a person name``): the source had no SEG and was tried again on every run."""
    from pipeline.inference.outputs import SegTemplates, encode_dicom

    pixels = next(iter(case_pixels.values()))
    source = build_dicom(pixels, DicomVariant.MONO2_16BIT, name="pn", spacing_mm=0.35)
    del source.PixelData
    if charset:
        source.SpecificCharacterSet = charset
    with_raw_value(source, "PatientName", name, "latin-1")  # the file's own character set
    data = _file_bytes(source)
    read, written = _read(data), _read(data)  # ``written`` keeps the file's raw bytes
    assert len(read.PatientName) == 2  # pydicom reads two names
    m = _one_lung(pixels.shape, (0.35, 0.35))
    algorithm = shipped_model.identity.algorithm()
    encoded = _assert_as_highdicom(read, m, SegTemplates(), SegTemplates(), algorithm)
    seg = _read(encoded)
    assert seg.get_item("PatientName").value == written.get_item("PatientName").value  # bytes
    assert "\\".join(map(str, seg.PatientName)) == name
    sr = sr_of(read, seg, m, shipped_model.identity)
    sr = pydicom.dcmread(pydicom.filebase.DicomBytesIO(encode_dicom(sr)))
    assert sr.get_item("PatientName").value == written.get_item("PatientName").value


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_a_source_without_a_reference_uid_gets_an_error_naming_it(
    case_pixels, shipped_model, keyword
):
    from pipeline.inference.outputs import MissingReferenceError, seg_bytes_of

    source = build_dicom(next(iter(case_pixels.values())), DicomVariant.MONO2_16BIT, name="nr")
    del source.PixelData
    delattr(source, keyword)
    m = _one_lung((512, 512))
    for make in (
        lambda: seg_of(source, m, shipped_model.identity),
        lambda: seg_bytes_of(source, m, shipped_model.identity, "20261207000000"),
    ):
        with pytest.raises(MissingReferenceError, match=f"has no {keyword}, by which a SEG"):
            make()


def test_completing_a_source_leaves_it_as_it_was(case_pixels):
    from pipeline.inference.outputs import _complete_type2

    source = build_dicom(next(iter(case_pixels.values())), DicomVariant.MONO2_16BIT, name="c")
    del source.StudyID
    source.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    completed = _complete_type2(source)
    assert completed.StudyID == "" and "StudyID" not in source
    assert source.SpecificCharacterSet == ["", "ISO 2022 IR 87"]


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("SOPInstanceUID", "1.2.3"),  # odd length: padded with NUL
        ("SOPInstanceUID", "1.2.34"),
        ("ContentDate", "20260102"),
        ("ContentTime", "030405"),
        ("ContentTime", "0304"),
        ("ContributionDateTime", "20260102030405"),
        ("InstanceNumber", 7),  # odd length: padded with a space
        ("InstanceNumber", 12),
        ("InstanceNumber", -3),
        ("PatientOrientation", ""),
        ("PatientOrientation", "A"),
        ("PatientOrientation", ["R", "F"]),  # several values
        ("PatientOrientation", ["L", "FH"]),
        ("PatientOrientation", []),
        ("PatientOrientation", MultiValue(str, ["P", "F"])),  # as a source's dataset holds it
        ("Rows", 512),
        ("Columns", 65535),
        ("PixelData", b"\x01\x02"),
        ("PixelData", bytes(70_000)),  # a 4-byte length
    ],
)
def test_simple_elements_are_encoded_as_pydicom_encodes_them(keyword, value):
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import DataElement
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    from pipeline.inference.outputs import _simple_element

    tag = tag_for_keyword(keyword)
    vr = "OB" if keyword == "PixelData" else dictionary_VR(tag)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, DataElement(tag, vr, value))
    assert _simple_element(tag, vr, value) == fp.getvalue()


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("PatientOrientation", "R\\F"),  # several values in one string: pydicom splits them
        ("SeriesDescription", "Lung"),  # LO: not a simple VR
        ("InstanceNumber", True),
        ("InstanceNumber", 1.5),
        ("ContentDate", 20260102),  # a number where text is due
        ("StudyID", "Lunge\u00e4"),
        ("PatientOrientation", ["R", 2]),
        ("PixelData", b"\x01"),  # odd length
        ("Rows", 65536),  # beyond US
        ("Rows", -1),
    ],
)
def test_other_elements_are_left_to_pydicom(keyword, value):
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    from pipeline.inference.outputs import _simple_element

    tag = tag_for_keyword(keyword)
    vr = "OB" if keyword == "PixelData" else dictionary_VR(tag)
    assert _simple_element(tag, vr, value) is None


def test_seg_and_sr_of_every_encoding_pass_dciodvfy_without_warnings(
    pixels, lung_mask, shipped_model, tmp_path
):
    import os
    import shutil
    import subprocess

    from pipeline.inference.lungs import measure

    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy not installed (make test-deps)")
        pytest.skip("dciodvfy not installed (Debian package dicom3tools; make test-deps)")
    m = measure(lung_mask, lung_mask.astype(np.float32), "L\\F", (0.35, 0.35))
    for variant in DicomVariant:
        source = build_dicom(pixels, variant, name=f"v-{variant}", spacing_mm=0.35)
        seg = seg_of(source, m, shipped_model.identity)
        sr = sr_of(source, seg, m, shipped_model.identity)
        for kind, ds in (("seg", seg), ("sr", sr)):
            path = tmp_path / f"{variant}-{kind}.dcm"
            ds.save_as(path, enforce_file_format=True)
            proc = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True)
            lines = (proc.stdout + proc.stderr).splitlines()
            problems = [x for x in lines if x.startswith(("Error", "Warning"))]
            assert not problems, f"{variant} {kind}: {problems}"


@pytest.mark.parametrize("shape", [None, (3, 5), (7, 9), (2, 4)])
def test_seg_frames_pack_without_gaps_between_frames(lung_mask, shape):
    """Whole-byte frames (a real mask; 2 x 4) and frames that end inside a byte."""
    from pipeline.inference.outputs import _packed_frames

    rng = np.random.default_rng(0)
    right = lung_mask if shape is None else rng.random(shape) > 0.5
    left = rng.random(right.shape) > 0.5
    bits = np.concatenate([right.reshape(-1), left.reshape(-1)])
    packed = np.frombuffer(_packed_frames((right, left)), dtype=np.uint8)
    assert len(packed) == -(-bits.size // 8)
    assert np.array_equal(np.unpackbits(packed, bitorder="little")[: bits.size], bits)


def test_overlay_labels_are_the_nearest_pick_of_the_full_grid():
    from PIL import Image

    from pipeline.inference.lungs import LungMeasures
    from pipeline.inference.outputs import display_labels

    labels = np.random.default_rng(0).integers(0, 3, (2048, 1536)).astype(np.uint8)
    m = LungMeasures(labels == 1, labels == 2, 2, 0.9)
    for shape in ((512, 384), (1024, 768), (2048, 1536)):
        pil = Image.fromarray(labels).resize(shape[::-1], Image.Resampling.NEAREST)
        np.testing.assert_array_equal(display_labels(m, shape), np.asarray(pil))


def test_tb_inputs_are_made_from_the_image_the_way_the_network_saw_it(tmp_path, shipped_model):
    """The TB classifier must see the radiograph upright with the lungs dark: a negative
    inverted back, a turned film turned with its lungs."""
    from pipeline.enums import OutputFormat
    from pipeline.inference.outputs import Context, write_outputs
    from pipeline.inference.predictor import Prediction

    image = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48)
    seen = []
    ctx = Context(
        tmp_path,
        (OutputFormat.MASK,),
        shipped_model.identity,
        "20260101000000",
        tb_inputs=lambda img, right, left: seen.append((img, right, left)) or img.sum(),
    )
    m = _one_lung((64, 48))
    for view in ("as_read", "negative", "rotated_180"):
        pred = Prediction(m.right | m.left, np.zeros((8, 8), np.float32), m, {"view": view})
        write_outputs(tmp_path / "a.png", Path("a.png"), pred, image, ctx)
    (read, right, _), (negative, right_negative, _), (turned, right_turned, _) = seen
    np.testing.assert_array_equal(read, image)
    np.testing.assert_array_equal(negative, 1 - image)
    np.testing.assert_array_equal(right_negative, right)
    np.testing.assert_array_equal(turned, np.rot90(image, 2))
    np.testing.assert_array_equal(right_turned, np.rot90(right, 2))
