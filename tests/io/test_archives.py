"""ZIP and TAR archives read a member at a time, safely (pipeline.io.archives)."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipeline.io.archives import (
    ArchiveError,
    StagingError,
    TarStream,
    archive_inputs,
    folder_name,
    is_archive,
    stage,
    tar_inputs,
    zip_inputs,
)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tf:
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


def test_tar_members_are_inputs_in_the_archive_s_order(tmp_path):
    archive = _tar(
        tmp_path / "set.tar.gz",
        {"b/2.dcm": b"two", "a/1.dcm": b"one", "a/._1.dcm": b"apple double"},
        links={"a/link.dcm": "1.dcm"},  # a link inside: allowed, but no input
    )
    inputs = tar_inputs(archive, tmp_path / "out" / "archives" / "set", "set")
    assert [f.relative.as_posix() for f in inputs] == ["set/b/2.dcm", "set/a/1.dcm"]
    assert inputs[1].path == tmp_path / "out" / "archives" / "set" / "a" / "1.dcm"
    assert inputs[1].member.location == f"{archive}/a/1.dcm" and inputs[1].member.info is None
    assert not inputs[0].path.exists()


@pytest.mark.parametrize(
    "links", [{"link.dcm": "/etc/passwd"}, {"up.dcm": "../../../outside.dcm"}], ids=str
)
def test_a_tar_member_leading_out_is_refused(tmp_path, links):
    archive = _tar(tmp_path / "evil.tar.gz", {"ok.dcm": b"x"}, links)
    with pytest.raises(ArchiveError, match=r"evil\.tar\.gz: member '(link|up)\.dcm' refused"):
        tar_inputs(archive, tmp_path / "out" / "evil", "evil")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").rglob("*.dcm")) == []


def test_a_tar_is_listed_once_while_it_is_unchanged(tmp_path, monkeypatch):
    archive = _tar(tmp_path / "set.tar.gz", {"a.dcm": b"a", "b.dcm": b"b"})
    folder = tmp_path / "out" / "archives" / "set"
    first = tar_inputs(archive, folder, "set")
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: pytest.fail("listed again"))
    assert tar_inputs(archive, folder, "set") == first  # from the kept list
    monkeypatch.undo()
    _tar(archive, {"c.dcm": b"c"})  # replaced: listed afresh
    os.utime(archive, ns=(10**18, 10**18))
    assert [f.relative.name for f in tar_inputs(archive, folder, "set")] == ["c.dcm"]


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_broken_archive_is_named_with_the_reason(tmp_path, kind):
    maker = _zip if kind == "zip" else _tar
    whole = maker(tmp_path / f"whole.{kind}", {"a.dcm": os.urandom(50_000)}).read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArchiveError, match=rf"cut\.{kind}: (cannot be read|named as)"):
        archive_inputs(cut, tmp_path / "out" / "cut", "cut")
    (tmp_path / "not.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ArchiveError, match="neither ZIP nor TAR"):
        archive_inputs(tmp_path / "not.zip", tmp_path / "out" / "not", "not")


def _stream_of(tmp_path: Path, data: dict[str, bytes], ahead: int, kind: str = "tar.gz"):
    archive = _tar(tmp_path / f"set.{kind}", data)
    inputs = tar_inputs(archive, tmp_path / "st", "set")
    return inputs, TarStream(archive, {f.member.key: f.path for f in inputs}, ahead)


@pytest.mark.parametrize("kind", ["tar", "tar.gz"])
def test_a_tar_stream_writes_its_members_in_order_a_few_ahead(tmp_path, kind):
    import time

    data = {f"{i}.dcm": os.urandom(1000 * (i + 1)) for i in range(6)}
    inputs, stream = _stream_of(tmp_path, data, ahead=2, kind=kind)
    try:
        for taken, found in enumerate(inputs):
            stream.take(found.member.key)
            assert found.path.read_bytes() == data[found.relative.name]
            time.sleep(0.05)  # the stream catches up as far as it may
            written = sorted(p.name for p in (tmp_path / "st").iterdir())
            assert len(written) <= taken + 1 + 2, written  # taken ones stay until removed
    finally:
        stream.close()


def test_a_tar_stream_removes_what_was_never_taken(tmp_path):
    import time

    inputs, stream = _stream_of(tmp_path, {f"{i}.dcm": b"x" * 100 for i in range(5)}, ahead=3)
    stream.take(inputs[0].member.key)
    time.sleep(0.1)
    assert len(list((tmp_path / "st").iterdir())) == 4  # the one taken and 3 ahead
    stream.close()
    assert [p.name for p in (tmp_path / "st").iterdir()] == ["0.dcm"]  # the batch removes it


def test_a_cut_tar_fails_the_members_after_the_cut_only(tmp_path):
    data = {f"{i}.dcm": os.urandom(40_000) for i in range(4)}
    whole = _tar(tmp_path / "whole.tar.gz", data)
    inputs = tar_inputs(whole, tmp_path / "st", "set")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    stream = TarStream(cut, {f.member.key: f.path for f in inputs}, ahead=8)
    try:
        stream.take(inputs[0].member.key)
        assert inputs[0].path.read_bytes() == data["0.dcm"]
        with pytest.raises(ArchiveError, match=r"in .*cut\.tar\.gz: cannot be read"):
            stream.take(inputs[3].member.key)
    finally:
        stream.close()
    assert not any(p.name.startswith(".") for p in (tmp_path / "st").iterdir())  # temporaries


def test_a_member_that_cannot_be_put_in_place_is_tried_again_not_failed(tmp_path):
    """The rename failing (a folder stands where the file goes) is the disk's doing, not the
    archive's: a StagingError, retried, and no temporary left (it was an ArchiveError)."""
    archive = _zip(tmp_path / "export.zip", {"a.dcm": b"x"})
    (found,) = zip_inputs(archive, tmp_path / "st", "export")
    found.path.mkdir(parents=True)
    (found.path / "in the way").write_bytes(b"")
    with pytest.raises(StagingError, match="could not be written out"):
        stage(found.member, found.path)
    assert sorted(p.name for p in found.path.parent.iterdir()) == ["a.dcm"]
