"""Specific Character Set values mended into the standard's defined terms."""

from __future__ import annotations

import codecs
import warnings

import pytest
from pydicom import charset

from pipeline.io.charset import (
    MULTI_BYTE_EXTENSIONS,
    SINGLE_BYTE_EXTENSIONS,
    WITHOUT_EXTENSIONS,
    standard_character_set,
)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ("ISO_IR 100", "ISO_IR 100"),
        ("ISO IR 100", "ISO_IR 100"),
        ("iso-ir 100", "ISO_IR 100"),
        ("ISO_IR100", "ISO_IR 100"),
        ("ISO 2022 IR 100", "ISO_IR 100"),  # code extensions, alone: highdicom refuses it
        ("ISO_IR 192", "ISO_IR 192"),
        ("UTF-8", "ISO_IR 192"),  # not a DICOM term at all: by the codec pydicom reads with
        ("gb18030", "GB18030"),
        ("ISO_IR 203", "ISO_IR 203"),
        ("NOT A CHARSET", "ISO_IR 100"),  # pydicom reads it with its default, Latin-1
        ("ISO_IR 6", None),  # the default repertoire: no value
        ("", None),
        (None, None),
        ("ISO 2022 IR 87", ["ISO 2022 IR 6", "ISO 2022 IR 87"]),  # multi-byte never first
        (["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]),
        (["ISO_IR 100", "ISO IR 144"], ["ISO 2022 IR 100", "ISO 2022 IR 144"]),
        (["ISO 2022 IR 6", "ISO_IR 192"], ["ISO 2022 IR 6", "ISO_IR 192"]),  # no way to mend
    ],
)
def test_values_become_defined_terms(values, expected):
    assert standard_character_set(values) == expected


@pytest.mark.parametrize(
    "value", ["ISO IR 100", "iso_ir 144", "UTF-8", "ISO 2022 IR 126", "shift_jis", "nonsense"]
)
def test_the_term_reads_text_as_pydicom_read_the_value(value):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = charset.convert_encodings([value])[0]
        ours = charset.convert_encodings([standard_character_set(value)])[0]
    assert codecs.lookup(ours).name == codecs.lookup(theirs).name


def test_every_term_returned_is_defined():
    defined = WITHOUT_EXTENSIONS | SINGLE_BYTE_EXTENSIONS | MULTI_BYTE_EXTENSIONS
    assert len(defined) == 15 + 13 + 4
    for value in ["ISO IR 13", "ISO-2022-IR-149", "utf_8", "latin-2", "cp1252"]:  # cp1252: UTF-8
        result = standard_character_set(value)
        assert set([result] if isinstance(result, str) else result) <= defined, value
