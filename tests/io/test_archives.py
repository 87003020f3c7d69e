"""ZIP members read one at a time and TAR archives extracted once, safely (pipeline.io.archives)."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipeline.io import archives
from pipeline.io.archives import (
    ArchiveError,
    StagingError,
    extract,
    folder_name,
    is_archive,
    stage,
    zip_inputs,
)


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


def test_zip_members_are_inputs_sorted_and_visible_as_a_folder_s_files(tmp_path):
    archive = _zip(
        tmp_path / "export.zip",
        {
            "b/2.dcm": b"two",
            "a/1.dcm": b"one",
            "__MACOSX/a/._1.dcm": b"resource fork",
            ".DS_Store": b"finder",
            "a/": b"",  # a folder entry
        },
    )
    inputs = zip_inputs(archive, tmp_path / "out" / "archives" / "export", "export")
    assert [f.relative.as_posix() for f in inputs] == ["export/a/1.dcm", "export/b/2.dcm"]
    assert inputs[0].path == tmp_path / "out" / "archives" / "export" / "a" / "1.dcm"
    assert not inputs[0].path.exists()  # nothing is written until it is read
    assert inputs[0].member.archive == archive and inputs[0].member.info.filename == "a/1.dcm"


def test_a_zip_member_is_written_out_whole_from_its_offset(tmp_path):
    data = {f"s/{i}.dcm": os.urandom(3000) + bytes(5000) for i in range(3)}
    archive = _zip(tmp_path / "export.zip", data)
    for found in zip_inputs(archive, tmp_path / "staged", "export"):
        stage(found.member, found.path)
        assert found.path.read_bytes() == data[found.member.info.filename]
    assert sorted(p.name for p in (tmp_path / "staged" / "s").iterdir()) == [
        "0.dcm",
        "1.dcm",
        "2.dcm",
    ]  # no temporaries left


def test_a_broken_zip_member_is_named_and_leaves_nothing(tmp_path):
    """A bit flipped in a member's data: its CRC-32 fails as it is read."""
    data = os.urandom(20_000)
    archive = _zip(tmp_path / "export.zip", {"a.dcm": data, "b.dcm": b"fine"})
    raw = bytearray(archive.read_bytes())
    found = {f.member.info.filename: f for f in zip_inputs(archive, tmp_path / "st", "export")}
    start = raw.index(b"a.dcm") + len("a.dcm") + 100  # inside a.dcm's compressed data
    raw[start] ^= 0xFF
    archive.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match=r"member 'a\.dcm' of .*export\.zip cannot be read"):
        stage(found["a.dcm"].member, found["a.dcm"].path)
    assert list((tmp_path / "st").iterdir()) == []
    stage(found["b.dcm"].member, found["b.dcm"].path)  # the others still read
    assert found["b.dcm"].path.read_bytes() == b"fine"


def test_a_zip_member_is_not_read_when_encrypted_or_the_archive_is_gone(tmp_path):
    archive = _zip(tmp_path / "export.zip", {"a.dcm": b"x"})
    (found,) = zip_inputs(archive, tmp_path / "st", "export")
    found.member.info.flag_bits |= 0x1
    with pytest.raises(ArchiveError, match="is encrypted"):
        stage(found.member, found.path)
    found.member.info.flag_bits &= ~0x1
    archive.unlink()
    with pytest.raises(StagingError, match=r"member 'a\.dcm' .* cannot be read") as err:
        stage(found.member, found.path)
    assert err.value.transient and found.member.signature() is None


def test_a_zip_member_leading_out_is_refused_when_listed(tmp_path):
    archive = _zip(tmp_path / "evil.zip", {"ok.dcm": b"x", "../../escaped.dcm": b"y"})
    with pytest.raises(ArchiveError, match=r"evil\.zip: member '\.\./\.\./escaped\.dcm'"):
        zip_inputs(archive, tmp_path / "st", "evil")
