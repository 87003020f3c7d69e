"""highdicom's module table parsed a module at a time (pipeline.io.highdicom_tables)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.io import highdicom_tables as tables
from tests.conftest import dicom_folder


@pytest.fixture(scope="module")
def table_file() -> Path:
    from highdicom import _standard_utils

    return Path(_standard_utils.__file__).parent / tables.TABLE


@pytest.fixture(scope="module")
def whole(table_file) -> dict:
    """The table as highdicom parses it."""
    return json.loads(table_file.read_bytes())


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(tables.CACHE_ENV, str(folder))
    return folder


def test_the_table_equals_highdicoms_module_for_module(table_file, whole, cache):
    table = tables.load_table(table_file, "test")
    assert not table.parsed  # nothing parsed until asked for
    assert table["patient"] == whole["patient"] and list(table.parsed) == ["patient"]
    assert len(table) == len(whole) and list(table) == list(whole)
    assert dict(table) == whole
    assert "no-such-module" not in table and table.get("no-such-module") is None
    with pytest.raises(KeyError):
        table["no-such-module"]


def test_the_spans_are_kept_and_reused(table_file, whole, cache, monkeypatch):
    tables.load_table(table_file, "test")
    assert len(list(cache.glob("highdicom-test-module-attributes-*.json"))) == 1

    def never(text: str) -> dict:
        raise AssertionError("parsed whole although the index fits")

    monkeypatch.setattr(tables, "module_spans", never)
    again = tables.load_table(table_file, "test")
    assert again["cr-image"] == whole["cr-image"]
    assert dict(again) == whole


@pytest.mark.parametrize("content", ["not json", '{"patient": [5, 99999999999]}', "[]", "{}"])
def test_an_index_that_does_not_fit_is_rebuilt(table_file, whole, cache, content):
    tables.load_table(table_file, "test")
    (index,) = cache.glob("*.json")
    index.write_text(content)
    assert dict(tables.load_table(table_file, "test")) == whole
    assert json.loads(index.read_text())["patient"] != [5, 99999999999]  # written again


def test_an_index_that_fits_the_length_but_not_the_content_gives_the_right_values(
    table_file, whole, cache
):
    tables.load_table(table_file, "test")
    (index,) = cache.glob("*.json")
    spans = json.loads(index.read_text())
    spans["patient"], spans["general-study"] = spans["general-study"], spans["patient"]
    a, b = spans["cr-image"]
    spans["cr-image"] = [a, b - 1]  # cut short: does not parse alone
    index.write_text(json.dumps(spans))
    table = tables.load_table(table_file, "test")
    assert table["patient"] == whole["patient"]
    assert table["general-study"] == whole["general-study"]
    assert table["cr-image"] == whole["cr-image"]
    assert dict(table) == whole


def test_a_changed_file_gets_its_own_index(tmp_path, cache):
    path = tmp_path / "table.json"
    path.write_text('{"a": [1], "b": {"c": "d"}}')
    assert dict(tables.load_table(path, "test")) == {"a": [1], "b": {"c": "d"}}
    path.write_text('{ "b" : [2,3] ,\n "a":"x\\u00e9" }')  # another size: another index
    assert dict(tables.load_table(path, "test")) == {"b": [2, 3], "a": "x\u00e9"}
    assert len(list(cache.glob("*.json"))) == 2


def test_without_a_writable_cache_the_file_is_parsed_each_time(
    table_file, whole, tmp_path, monkeypatch
):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(tables.CACHE_ENV, str(blocker / "cache"))
    assert dict(tables.load_table(table_file, "test")) == whole


def test_a_user_without_a_home_folder_gets_no_cache(table_file, whole, monkeypatch):
    """A container's arbitrary user (no $HOME, no passwd entry) made Path.home() raise."""
    monkeypatch.delenv(tables.CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(tables.Path, "home", staticmethod(no_home))
    assert tables.cache_dir() is None
    assert dict(tables.load_table(table_file, "test")) == whole
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert tables.cache_dir() == Path("/somewhere/lungseg")


def test_a_file_with_other_than_ascii_is_parsed_not_indexed(tmp_path, cache):
    path = tmp_path / "table.json"
    path.write_text('{"é": ["ü"], "b": []}', encoding="utf-8")
    assert dict(tables.load_table(path, "test")) == {"é": ["ü"], "b": []}
    assert not cache.exists()


@pytest.mark.parametrize("text", ["", "[1]", '{"a": 1', '{"a" 1}'])
def test_what_is_not_a_json_object_is_refused(text):
    with pytest.raises((ValueError, IndexError)):
        tables.module_spans(text)


SEG = """
import hashlib, sys
import pydicom
from pipeline.inference import outputs
from pipeline.inference.lungs import measure
import numpy as np
if sys.argv[2] == "whole":  # highdicom's own parse
    outputs.install_lazy_tables = lambda: False
outputs.load_standard_tables()
source = pydicom.dcmread(sys.argv[1], stop_before_pixels=True)
mask = np.zeros((source.Rows, source.Columns), bool)
mask[100:400, 60:240] = mask[100:400, 280:460] = True
m = measure(mask, mask.astype(np.float32), "L\\\\F", (0.7, 0.7))
seg = outputs.build_seg(source, m, {"series_instance_uid": "1.2.3", "sop_instance_uid": "1.2.4"},
                        {"name": "lungseg", "version": "1"})
outputs.pin_dates(seg, "20260102030405")
import highdicom.base, highdicom.image
from highdicom import _standard_utils as standard
table = highdicom.base.get_module_attribute_map()
same = table is highdicom.image.get_module_attribute_map() is standard.get_module_attribute_map()
parsed = len(getattr(table, "parsed", table))
digest = hashlib.sha256(outputs.encode_dicom(seg)).hexdigest()
print(digest, type(table).__name__, same, parsed < len(table))
"""


def test_highdicom_builds_the_same_seg_reading_a_module_at_a_time(tmp_path, pixels):
    """Before, highdicom parsed all 436 modules (~0.2 s) for the ~30 a SEG reads."""
    dicom_folder(tmp_path / "in", pixels)
    source = str(tmp_path / "in" / "0.dcm")
    env = {**__import__("os").environ, tables.CACHE_ENV: str(tmp_path / "cache")}
    runs = {}
    for mode in ("whole", "lazy", "lazy"):  # the second lazy run reads the index
        out = subprocess.run(
            [sys.executable, "-c", SEG, source, mode],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
            env=env,
        ).stdout.split()
        runs.setdefault(mode, []).append(out)
    whole, (lazy, again) = runs["whole"][0], runs["lazy"]
    assert whole[1:] == ["dict", "True", "False"]
    assert lazy[1:] == again[1:] == ["ModuleTable", "True", "True"]
    assert lazy[0] == again[0] == whole[0]


@pytest.mark.parametrize("text", ["{", '{"a": 1,', '{"a": [1]  '])
def test_a_table_cut_short_is_a_value_error(text):
    """Before, a table ending after its opening brace raised IndexError, which install()
    does not catch: SEG writing failed instead of leaving highdicom its own parse."""
    with pytest.raises(ValueError):
        tables.module_spans(text)


def test_a_failed_install_is_not_retried(monkeypatch):
    """install() runs for every SEG template built; a failure used to read the file again."""
    calls = []

    def broken(path: Path, version: str):
        calls.append(path)
        raise ValueError("not a JSON object")

    monkeypatch.setattr(tables, "load_table", broken)
    tables.install.cache_clear()
    try:
        assert tables.install() is False and tables.install() is False
        assert len(calls) == 1
    finally:
        tables.install.cache_clear()


TEMPLATED = """
import json, sys
import pydicom
big = []
real_loads = json.loads
def loads(text, *a, **k):
    if len(text) > 1_000_000:
        big.append(len(text))
    return real_loads(text, *a, **k)
json.loads = loads
from pipeline.inference import outputs
from pipeline.inference.lungs import measure
import numpy as np
source = pydicom.dcmread(sys.argv[1], stop_before_pixels=True)
mask = np.zeros((source.Rows, source.Columns), bool)
mask[100:400, 60:240] = mask[100:400, 280:460] = True
m = measure(mask, mask.astype(np.float32), "L\\\\F", (0.7, 0.7))
uids = {"series_instance_uid": "1.2.3", "sop_instance_uid": "1.2.4"}
algorithm = {"name": "lungseg", "version": "1"}
outputs.SegTemplates().encode(source, m, uids, algorithm, "20260102030405")
print(len(big))
"""


def test_a_seg_template_without_loaded_tables_reads_a_module_at_a_time(tmp_path, pixels):
    """Before, SegTemplates asked for the table before build_seg installed the lazy one, so a
    process that had not called load_standard_tables (``--workers 0``, the web viewer, the
    DICOM node) parsed highdicom's whole 22 MB file (~0.2 s) for its first SEG."""
    dicom_folder(tmp_path / "in", pixels)
    env = {**__import__("os").environ, tables.CACHE_ENV: str(tmp_path / "cache")}
    source = str(tmp_path / "in" / "0.dcm")
    for _ in range(2):  # the first run builds the index (one whole parse), the second reads it
        out = subprocess.run(
            [sys.executable, "-c", TEMPLATED, source],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
            env=env,
        )
    assert out.stdout.split() == ["0"]
