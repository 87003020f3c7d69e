"""Patient and study values of real files mended into their VR's form, for objects made from them.

A SEG or SR copies the source's patient and study attributes, and highdicom checks the few
it is given explicitly: the birth date, sex, study date and study time. Real files carry
forms the standard does not allow there: dates written ``2023-01-01`` or ``2023.01.01``,
times ``10:11:12`` (the ACR-NEMA form), impossible dates, ``Male`` or ``f`` for the sex.
highdicom refused them, so such a source had no SEG. These functions give the value in its
VR's form where the meaning is plain, else an empty value (the attributes are Type 2: known
to be unknown). Identifiers (names, IDs, UIDs) are never changed: they must match the
source's.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence

#: Patient Sex (0010,0040) enumerated values, and the spelled-out words real files use.
_SEX = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F", "OTHER": "O"}


def mended_date(value: str) -> str:
    """A DA value ``YYYYMMDD`` from ``value`` (also ``YYYY-MM-DD``, ``YYYY.MM.DD``, ``YYYY/MM/DD``).

    Returns:
        ``value`` itself when it is a valid date already; "" when it names no valid date.
    """
    found = re.fullmatch(r"(\d{4})([-./]?)(\d{2})\2(\d{2})", value.strip())
    if found is None:
        return ""
    year, _, month, day = found.groups()
    try:
        datetime.date(int(year), int(month), int(day))
    except ValueError:  # 19800132, 00000000
        return ""
    return value if value == year + month + day else year + month + day


def mended_time(value: str) -> str:
    """A TM value ``HH[MM[SS[.F{1,6}]]]`` from ``value`` (also ``HH:MM[:SS[.F]]``).

    Returns:
        ``value`` itself when it is a valid time already; "" when it names no valid time.
    """
    text = value.strip()
    found = re.fullmatch(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?", text)
    if found is None:
        return ""
    hours, minutes, seconds, fraction = found.groups()
    if int(hours) > 23 or int(minutes or 0) > 59 or int(seconds or 0) > 60:
        return ""
    mended = hours + (minutes or "") + (seconds or "") + (fraction or "")
    return value if value == mended else mended


def mended_sex(value: str) -> str:
    """Patient Sex as ``M``, ``F`` or ``O`` (also from ``male``, ``Female``...); "" if unknown."""
    return _SEX.get(value.strip().upper(), "")


def mended_code_string(value: str) -> str:
    """A CS value as the standard writes them: upper case, no surrounding spaces."""
    return value.strip().upper()


def mended_modality(value: str) -> str:
    """A Modality as a CS value short enough to name a SEG's content (``CR_SEG``); else ``OT``.

    highdicom labels a SEG's content ``<source modality>_SEG``, a CS value of at most 16
    upper-case letters, digits, spaces or underscores: ``cr`` becomes ``CR``; an absent or
    unusable value, ``OT`` (other).
    """
    text = mended_code_string(value)
    return text if re.fullmatch(r"[A-Z0-9_ ]{1,12}", text) else "OT"


def valid_patient_orientation(values: Sequence[str]) -> bool:
    """Whether ``values`` are a Patient Orientation: two directions of L, R, A, P, H, F."""
    return len(values) == 2 and all(re.fullmatch(r"[LRAPHF]+", str(v)) for v in values)
