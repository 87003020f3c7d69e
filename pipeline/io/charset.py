"""A source's Specific Character Set as the standard's defined terms, for the objects made from it.

Real files carry spellings the standard does not define: ``ISO IR 100``, ``ISO-IR 100``,
``iso_ir 100``, ``ISO_IR 6`` (the default repertoire, which is written as no value),
``ISO 2022 IR 100`` as a single value, ``UTF-8``. pydicom reads their text anyway (it mends
the usual misspellings, else asks Python's codecs, else falls back to its default). highdicom,
which makes the SEG and SR, accepts only defined terms (PS3.3 C.12.1.1.2), so such a source's
SEG failed. :func:`standard_character_set` gives the defined terms, those that decode the
source's text as pydicom decoded it wherever the standard has such a term.
"""

from __future__ import annotations

import codecs
import functools
import re
import warnings
from collections.abc import Sequence

#: The single-byte repertoires' ISO-IR numbers (PS3.3 Tables C.12-2 and C.12-3).
_SINGLE_BYTE = ("100", "101", "109", "110", "144", "127", "126", "138", "148", "203", "13", "166")
#: Defined terms used without code extensions: one value only (Tables C.12-2 and C.12-5).
WITHOUT_EXTENSIONS = frozenset(
    {f"ISO_IR {n}" for n in _SINGLE_BYTE} | {"ISO_IR 192", "GB18030", "GBK"}
)
#: The default repertoire with code extensions: the first value of a multi-valued set.
DEFAULT_WITH_EXTENSIONS = "ISO 2022 IR 6"
#: Single-byte defined terms with code extensions (Table C.12-3).
SINGLE_BYTE_EXTENSIONS = frozenset({f"ISO 2022 IR {n}" for n in ("6", *_SINGLE_BYTE)})
#: Multi-byte defined terms with code extensions (Table C.12-4): never the first value.
MULTI_BYTE_EXTENSIONS = frozenset({f"ISO 2022 IR {n}" for n in ("87", "159", "149", "58")})


def spelled(value: str) -> str:
    """``value`` with the usual misspellings of a defined term mended (case, ``_``/``-``/space).

    ``"iso-ir 100"`` gives ``"ISO_IR 100"``, ``"ISO2022 IR 87"`` gives ``"ISO 2022 IR 87"``;
    anything else comes back upper-cased, its separators as single spaces.
    """
    text = re.sub(r"[\s_-]+", " ", value.strip().upper())
    if found := re.fullmatch(r"ISO ?2022 ?IR ?0*(\d+)", text):
        return f"ISO 2022 IR {found[1]}"
    if found := re.fullmatch(r"ISO ?IR ?0*(\d+)", text):
        return f"ISO_IR {found[1]}"
    return text


def standard_character_set(values: str | Sequence[str] | None) -> str | list[str] | None:
    """The defined terms for a Specific Character Set, reading its text as pydicom does.

    Args:
        values: the attribute's value(s) as the file has them (None or empty: absent).

    Returns:
        One defined term, several (code extensions, the first for the default repertoire
        when the file left it empty), or None for the default repertoire (no attribute).
        A multi-valued set whose values have no code-extension form comes back mended in
        spelling only: the standard has no way to write it.
    """
    if values is None or isinstance(values, str):
        values = [values or ""]
    return _cached(tuple(str(v) for v in values))


@functools.lru_cache(maxsize=64)
def _cached(values: tuple[str, ...]) -> str | list[str] | None:
    return _single(values[0]) if len(values) == 1 else _several(values)


def _single(value: str) -> str | list[str] | None:
    """A one-valued set: its term without code extensions (None: the default repertoire)."""
    term = spelled(value)
    if term in ("", "ISO_IR 6", DEFAULT_WITH_EXTENSIONS):
        return None
    if term in WITHOUT_EXTENSIONS:
        return term
    if term in SINGLE_BYTE_EXTENSIONS:  # the same repertoire; one alone needs no escapes
        return term.replace("ISO 2022 IR", "ISO_IR")
    if term in MULTI_BYTE_EXTENSIONS:  # what it means: the default repertoire, then it
        return [DEFAULT_WITH_EXTENSIONS, term]
    return _by_codec(value)


def _several(values: tuple[str, ...]) -> list[str]:
    """A set with code extensions: each value in its code-extension form where it has one."""
    out = [_with_extensions(spelled(v) or DEFAULT_WITH_EXTENSIONS) for v in values]
    return [DEFAULT_WITH_EXTENSIONS, *out] if out[0] in MULTI_BYTE_EXTENSIONS else out


def _with_extensions(term: str) -> str:
    """``term`` in its code-extension form (``ISO_IR 100``: ``ISO 2022 IR 100``) if it has one."""
    extended = term.replace("ISO_IR", "ISO 2022 IR")
    return extended if extended in SINGLE_BYTE_EXTENSIONS | MULTI_BYTE_EXTENSIONS else term


def _by_codec(value: str) -> str:
    """The defined term without extensions whose codec is the one pydicom reads ``value`` with.

    A value neither pydicom nor Python's codecs know is read with pydicom's default (Latin
    alphabet No. 1), so it becomes ``ISO_IR 100``; a codec no defined term has (``cp1252``)
    gives ``ISO_IR 192``, UTF-8, which holds any text.
    """
    codec = _codec(value)
    return next((t for t in sorted(WITHOUT_EXTENSIONS) if _codec(t) == codec), "ISO_IR 192")


def _codec(value: str) -> str:
    """The Python codec pydicom decodes text under ``value`` with (its canonical name)."""
    from pydicom import charset

    with warnings.catch_warnings():  # pydicom warns of every value it had to mend or guess
        warnings.simplefilter("ignore")
        try:
            name = charset.convert_encodings([value])[0]
        except LookupError:  # pydicom set to raise on invalid values: it would use its default
            name = charset.default_encoding
    try:
        return codecs.lookup(name).name
    except LookupError:
        return codecs.lookup(charset.default_encoding).name
