"""highdicom's table of every module's attributes, parsed one module at a time.

highdicom checks and copies a SEG's attributes with tables of the DICOM standard. The
largest, the attributes of each of 436 modules, is 22 MB of JSON: ~0.2 s to parse whole on
first use, ~100,000 objects, although a radiograph's SEG reads about 30 of its modules.
That parse was the longest step between ``lungseg segment``'s imports and its first image.

:func:`install` gives highdicom a :class:`ModuleTable` instead: highdicom's own file, read
as bytes, with each module's JSON cut out and parsed when first asked for. Where each module
lies in the file (:func:`module_spans`) is found by one whole parse, then kept in a small
index in the cache folder (:func:`cache_dir`), named after highdicom's version and the
file's size and modification time: later processes read the file and the index (~20 ms).
Without a cache folder (no home folder), a writable one, or an index that fits the file,
every start parses the whole table, as highdicom itself does. A module is taken from its
span only where its key precedes it and it parses alone; otherwise (an index damaged but of
the right length) from one parse of the whole file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from pipeline.io.atomic import atomic_path

#: highdicom's data file, inside its package.
TABLE = "_standard/module_attribute_map.json"
#: Environment variable naming the cache folder (default: ``$XDG_CACHE_HOME/lungseg``).
CACHE_ENV = "LUNGSEG_CACHE_DIR"


def cache_dir() -> Path | None:
    """``$LUNGSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/lungseg``, else ``~/.cache/lungseg``.

    None when none is set and the user has no home folder (a container's arbitrary user).
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "lungseg"
    try:
        return Path.home() / ".cache" / "lungseg"
    except (RuntimeError, KeyError):  # no $HOME and no passwd entry
        return None


class ModuleTable(Mapping[str, list]):
    """A module key → its attributes mapping, each module parsed on first access.

    Equal, key for key, to ``json.loads`` of the whole file (tests/io/test_highdicom_tables.py).

    Args:
        data: the file's bytes (ASCII), or its text.
        spans: module key → ``(start, end)`` of its value in ``data``.
    """

    def __init__(self, data: bytes | str, spans: dict[str, tuple[int, int]]):
        self._data, self._spans = data, spans
        self.parsed: dict[str, list] = {}
        self._whole: dict[str, list] | None = None

    def __getitem__(self, key: str) -> list:
        if key not in self.parsed:
            start, end = self._spans[key]  # KeyError for an unknown module, as the dict's
            self.parsed[key] = self._value(key, start, end)
        return self.parsed[key]

    def _value(self, key: str, start: int, end: int) -> list:
        """The JSON at ``start:end`` when ``"key":`` precedes it and it parses alone.

        Otherwise (an index that fits the file's length but not its content) the value
        from one parse of the whole file.
        """
        before = self._data[max(0, start - len(key) - 64) : start]
        text = before.decode("ascii", "replace") if isinstance(before, bytes) else before
        if text.rstrip().removesuffix(":").rstrip().endswith(json.dumps(key)):
            with contextlib.suppress(ValueError):
                return json.loads(self._data[start:end])
        if self._whole is None:
            self._whole = json.loads(self._data)
        return self._whole[key]

    def __contains__(self, key: object) -> bool:
        return key in self._spans

    def __iter__(self) -> Iterator[str]:
        return iter(self._spans)

    def __len__(self) -> int:
        return len(self._spans)


def module_spans(text: str) -> dict[str, tuple[int, int]]:
    """Where each top-level value of a JSON object lies in ``text`` (one whole parse).

    Raises:
        ValueError: ``text`` is not a JSON object.
    """
    decoder, spans = json.JSONDecoder(), {}
    at = _skip(text, 0, "{")
    while text[at : at + 1] != "}":  # an empty slice at the end: raw_decode says why
        key, at = decoder.raw_decode(text, at)
        start = _skip(text, at, ":")
        end = decoder.raw_decode(text, start)[1]
        spans[key] = (start, end)
        at = _skip(text, end, ",", optional=True)
    return spans


def _skip(text: str, at: int, char: str, optional: bool = False) -> int:
    """The index after whitespace, ``char`` and whitespace from ``at``.

    Raises:
        ValueError: the text ends before ``char`` (unless ``optional``), or another follows.
    """
    while at < len(text) and text[at].isspace():
        at += 1
    if at == len(text):
        raise ValueError(f"the table ends at offset {at}, before {char!r} or its closing brace")
    if text[at] == char:
        at += 1
    elif not optional:
        raise ValueError(f"expected {char!r} at offset {at} of the table, found {text[at]!r}")
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def load_table(path: Path, version: str) -> ModuleTable:
    """The table in ``path``, its module spans from the cache index when one fits.

    The spans count bytes, which are characters in an ASCII file (highdicom's is); a file
    with other characters is parsed for its spans at every call, never indexed.

    Raises:
        OSError: ``path`` cannot be read.
        ValueError: it is not a JSON object (or not UTF-8).
    """
    data = path.read_bytes()
    if not data.isascii():
        text = data.decode("utf-8")
        return ModuleTable(text, module_spans(text))
    index = _index_path(path, version)
    spans = None if index is None else _read_index(index, len(data))
    if spans is None:
        spans = module_spans(data.decode("ascii"))
        if index is not None:  # without a writable cache, the next start parses it whole again
            with contextlib.suppress(OSError), atomic_path(index, durable=False) as tmp:
                tmp.write_text(json.dumps(spans))
    return ModuleTable(data, spans)


def _index_path(path: Path, version: str) -> Path | None:
    """The index's name in the cache (highdicom's version, the file's size and time)."""
    folder = cache_dir()
    if folder is None:
        return None
    stat = path.stat()
    key = f"{version}:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return folder / f"highdicom-{version}-module-attributes-{digest}.json"


def _read_index(index: Path, length: int) -> dict[str, tuple[int, int]] | None:
    """The spans the index holds; None when it is missing, unreadable or does not fit."""
    try:
        spans = {k: (int(a), int(b)) for k, (a, b) in json.loads(index.read_text()).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    fits = all(0 <= a < b <= length for a, b in spans.values())
    return spans if spans and fits else None


@functools.cache
def install() -> bool:
    """Make highdicom read its module table through :class:`ModuleTable` (once).

    Replaces ``get_module_attribute_map`` in highdicom's modules that bound it. Returns
    whether it is installed; False (highdicom keeps its own, whole parse) where this
    highdicom has no such table or function, or the file cannot be read. Either outcome
    is kept: later calls neither read the file again nor retry.
    """
    try:
        import highdicom
        from highdicom import _standard_utils as standard
    except ImportError:
        return False
    original = getattr(standard, "get_module_attribute_map", None)
    path = Path(standard.__file__).parent / TABLE
    if original is None or not path.is_file():
        return False
    try:
        table = load_table(path, highdicom.__version__)
    except (OSError, ValueError):
        return False
    _rebind(original, lambda: table)
    return True


def _rebind(original: Callable, replacement: Callable) -> None:
    """Point every loaded highdicom module's name for ``original`` at ``replacement``."""
    import sys

    for name, module in list(sys.modules.items()):
        if name == "highdicom" or name.startswith("highdicom."):
            for attr, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attr, replacement)
