"""Patient and study values mended into their VR's form (or emptied when they mean nothing)."""

from __future__ import annotations

import pytest

from pipeline.io.mend import mended_date, mended_modality, mended_sex, mended_time


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20230101", "20230101"),
        ("2023-01-31", "20230131"),
        ("2023.01.31", "20230131"),
        ("2023/01/31", "20230131"),
        (" 20230131 ", "20230131"),
        ("2023-0131", ""),  # mixed separators: not a form anyone writes
        ("19800132", ""),  # no such day
        ("00000000", ""),
        ("2023", ""),
        ("", ""),
        ("unknown", ""),
    ],
)
def test_dates(value, expected):
    assert mended_date(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("101112", "101112"),
        ("101112.123456", "101112.123456"),
        ("10", "10"),
        ("1011", "1011"),
        ("10:11:12", "101112"),  # ACR-NEMA
        ("10:11:12.5", "101112.5"),
        ("10:11", "1011"),
        ("24:00:00", ""),
        ("10:61", ""),
        ("101112.1234567", ""),
        ("10h11", ""),
        ("", ""),
    ],
)
def test_times(value, expected):
    assert mended_time(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("M", "M"), ("f", "F"), ("O", "O"), ("Male", "M"), (" FEMALE ", "F"), ("U", ""), ("", "")],
)
def test_sex(value, expected):
    assert mended_sex(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("CR", "CR"), ("cr ", "CR"), ("DX", "DX"), ("", "OT"), ("X-RAY", "OT"), ("A" * 13, "OT")],
)
def test_modality(value, expected):
    assert mended_modality(value) == expected
