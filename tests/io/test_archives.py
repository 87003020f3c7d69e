"""ZIP and TAR archives extracted once, safely, into the output folder (pipeline.io.archives)."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipeline.io import archives
from pipeline.io.archives import ArchiveError, extract, folder_name, is_archive


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


@pytest.mark.parametrize(
    ("name", "folder"),
    [("study.zip", "study"), ("set.tar.gz", "set"), ("A.TGZ", "A"), ("x.tar", "x")],
)
def test_archive_names(tmp_path, name, folder):
    (tmp_path / name).write_bytes(b"")
    assert is_archive(tmp_path / name) and folder_name(tmp_path / name) == folder
    assert not is_archive(tmp_path / "study.dcm") and not is_archive(tmp_path)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_members_are_extracted_once_while_the_archive_is_unchanged(tmp_path, kind):
    members = {"patient1/CR/1.dcm": b"one", "patient2/2.dcm": b"two"}
    maker = _zip if kind == "zip" else _tar
    archive = maker(tmp_path / f"export.{kind}", members)
    folder = extract(archive, tmp_path / "out" / "archives")
    assert folder == tmp_path / "out" / "archives" / "export"
    assert {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.dcm")} == {
        k: v for k, v in members.items()
    }
    first = (folder / "patient2" / "2.dcm").stat().st_mtime_ns
    os.utime(folder / "patient2" / "2.dcm", ns=(1, 1))
    assert extract(archive, tmp_path / "out" / "archives") == folder  # reused as it is
    assert (folder / "patient2" / "2.dcm").stat().st_mtime_ns == 1 != first
    maker(archive, {"patient3/3.dcm": b"three"})  # replaced: extracted afresh
    os.utime(archive, ns=(10**18, 10**18))
    extract(archive, tmp_path / "out" / "archives")
    assert sorted(p.name for p in folder.rglob("*.dcm")) == ["3.dcm"]
    assert not list((tmp_path / "out" / "archives").glob(".*partial"))


def test_a_zip_member_outside_the_archive_is_refused(tmp_path):
    archive = _zip(tmp_path / "evil.zip", {"ok.dcm": b"x", "../../escaped.dcm": b"y"})
    with pytest.raises(ArchiveError, match=r"evil\.zip: member '\.\./\.\./escaped\.dcm'"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.dcm").exists() and _left(tmp_path / "out") == []


@pytest.mark.parametrize(
    "links", [{"link.dcm": "/etc/passwd"}, {"up.dcm": "../../../outside.dcm"}], ids=str
)
def test_a_tar_link_leading_out_is_refused(tmp_path, links):
    archive = _tar(tmp_path / "evil.tar.gz", {"ok.dcm": b"x"}, links)
    with pytest.raises(ArchiveError, match=r"evil\.tar\.gz: cannot be extracted"):
        extract(archive, tmp_path / "out")
    assert _left(tmp_path / "out") == []  # nothing left, not even the partial copy


def test_an_archive_that_does_not_fit_is_refused_before_writing(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "big.zip", {"a.dcm": b"\0" * 4096})
    monkeypatch.setattr(archives, "HEADROOM", 2**62)
    with pytest.raises(ArchiveError, match=r"big\.zip: its files need .* MiB free"):
        extract(archive, tmp_path / "out")
    assert _left(tmp_path / "out") == []


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_broken_archive_is_named_with_the_reason(tmp_path, kind):
    maker = _zip if kind == "zip" else _tar
    whole = maker(tmp_path / f"whole.{kind}", {"a.dcm": os.urandom(50_000)}).read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArchiveError, match=rf"cut\.{kind}: (cannot be extracted|named as)"):
        extract(cut, tmp_path / "out")
    assert _left(tmp_path / "out") == []


def test_shards_extracting_one_archive_take_turns(tmp_path, monkeypatch):
    """Two shards of a batch start on the same archive: one extracts, the other waits for
    it and finds its copy (before the lock, each removed the other's partial folder)."""
    import threading
    import time

    archive = _zip(tmp_path / "export.zip", {"a.dcm": b"a"})
    real, extractions = archives._extract_into, []

    def slow(*args):
        extractions.append(threading.current_thread().name)
        time.sleep(0.2)  # long enough for the other shard to arrive meanwhile
        real(*args)

    monkeypatch.setattr(archives, "_extract_into", slow)
    results = []
    shards = [
        threading.Thread(target=lambda: results.append(extract(archive, tmp_path / "out")))
        for _ in range(2)
    ]
    for shard in shards:
        shard.start()
    for shard in shards:
        shard.join(timeout=30)
    assert len(extractions) == 1 and len(results) == 2 and results[0] == results[1]
    assert (results[0] / "a.dcm").read_bytes() == b"a"


def _left(folder: Path) -> list[str]:
    """What an extraction left in ``folder``, its lock files aside."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))
