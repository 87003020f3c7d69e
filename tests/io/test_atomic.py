"""Atomic writes are durable (file, then folder, fsync'ed) and get the umask's mode."""

from __future__ import annotations

import os
import stat

import pytest

from pipeline.io import atomic


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_get_the_mode_the_umask_gives(tmp_path, umask, mask, mode):
    umask(mask)
    path = atomic.write_text_atomic(tmp_path / "out" / "report.csv", "a,b\n")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    path = atomic.write_bytes_atomic(tmp_path / "out" / "mask.png", b"png")
    assert stat.S_IMODE(path.stat().st_mode) == mode


@pytest.fixture
def events(monkeypatch) -> list[tuple[str, str]]:
    """``("fsync", the file or folder)`` and ``("rename", the new name)``, in order."""
    noted, real_replace = [], os.replace
    monkeypatch.setattr(
        atomic.os, "fsync", lambda fd: noted.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
    )
    monkeypatch.setattr(
        atomic.os, "replace", lambda a, b: (noted.append(("rename", b)), real_replace(a, b))
    )
    return noted


def test_the_file_is_synced_before_the_rename_and_the_folder_after(tmp_path, events):
    target = tmp_path / "mask.png"
    atomic.write_bytes_atomic(target, b"png")
    assert [e[0] for e in events] == ["fsync", "rename", "fsync"]
    assert events[0][1].endswith(".tmp") and events[2][1] == str(tmp_path)
    assert target.read_bytes() == b"png" and not list(tmp_path.glob(".*.tmp"))


def test_deferred_folder_syncs_leave_the_folder_to_the_caller(tmp_path, events):
    """Inside the block each file is still fsync'ed before its rename; its folder is noted."""
    masks = tmp_path / "masks"
    masks.mkdir()
    with atomic.deferred_folder_syncs() as folders:
        atomic.write_bytes_atomic(masks / "a.png", b"a")
        atomic.write_text_atomic(masks / "b.txt", "b")
    assert folders == {str(masks)}
    assert [e[0] for e in events] == ["fsync", "rename"] * 2  # no folder fsync
    assert events[0][1].endswith(".tmp") and (masks / "b.txt").read_text() == "b"
    atomic.sync_folders(folders)
    assert events[-1] == ("fsync", str(masks))
    events.clear()
    atomic.write_bytes_atomic(masks / "c.png", b"c")  # outside the block: at once again
    assert [e[0] for e in events] == ["fsync", "rename", "fsync"]


def test_concurrent_writes_wait_for_the_disk_together(tmp_path, monkeypatch):
    """Three files' fsyncs are in flight at once (a barrier of three passes only then), on
    writer threads; the block ends with every file whole and its folder noted."""
    import threading

    barrier, threads = threading.Barrier(3, timeout=10), set()
    real_fsync = os.fsync

    def together(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            threads.add(threading.current_thread().name)
            barrier.wait()  # BrokenBarrierError unless the three wait together
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", together)
    with atomic.deferred_folder_syncs() as folders, atomic.concurrent_writes(slow_fsync=0):
        for name in ("seg.dcm", "mask.png", "overlay.png"):
            assert atomic.write_bytes_atomic(tmp_path / name, name.encode()) == tmp_path / name
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {
        n: n.encode() for n in ("seg.dcm", "mask.png", "overlay.png")
    }
    assert len(threads) == 3 and threading.current_thread().name not in threads
    assert folders == {str(tmp_path)}


def test_a_failed_concurrent_write_is_raised_once_all_are_done(tmp_path, monkeypatch):
    real_write = atomic._write_all

    def full_for_masks(fd, data):
        if data == b"mask":
            raise OSError(28, "No space left on device")
        real_write(fd, data)

    monkeypatch.setattr(atomic, "_write_all", full_for_masks)
    with pytest.raises(OSError, match="No space"), atomic.concurrent_writes(slow_fsync=0):
        atomic.write_bytes_atomic(tmp_path / "mask.png", b"mask")
        atomic.write_bytes_atomic(tmp_path / "seg.dcm", b"seg")
    assert (tmp_path / "seg.dcm").read_bytes() == b"seg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]  # no temporary left


def test_concurrent_writes_write_at_once_while_fsyncs_are_fast(tmp_path, monkeypatch):
    """Threads cost CPU a fast disk does not repay: they are used once fsyncs are slow."""
    import threading
    import time

    names = []
    delay = {"seconds": 0.0}

    def fsync(fd):  # this disk's own fsyncs, slow at times, must not decide the test
        names.append(threading.current_thread().name)
        time.sleep(delay["seconds"])

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic, "_recent_fsync", 0.0)
    for seconds in (0.0, 0.0, 0.003, 0.003, 0.003, 0.003):
        delay["seconds"] = seconds
        with atomic.deferred_folder_syncs(), atomic.concurrent_writes():
            atomic.write_bytes_atomic(tmp_path / "mask.png", b"mask")
    here = threading.current_thread().name
    assert names[:3] == [here] * 3  # fast, then the first slow one measured here
    assert names[-1].startswith("lungseg-writer")


def test_without_a_thread_to_be_had_concurrent_writes_write_at_once(tmp_path, monkeypatch):
    """A container's process limit (pids.max) can refuse a new thread: the file is still
    written, here and now, not lost as a failed image."""

    class NoThreads:
        def submit(self, *args, **kwargs):
            raise RuntimeError("can't start new thread")

    monkeypatch.setattr(atomic, "_writers", NoThreads)
    with atomic.concurrent_writes(slow_fsync=0):
        atomic.write_bytes_atomic(tmp_path / "mask.png", b"mask")
        assert (tmp_path / "mask.png").read_bytes() == b"mask"  # already, before the end


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = atomic.write_text_atomic(tmp_path / "summary.json", "old")
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk went away")
    assert target.read_text() == "old" and not list(tmp_path.glob(".*.tmp"))


def test_bytes_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    target = atomic.write_bytes_atomic(tmp_path / "seg.dcm", b"old")
    real_write, written = os.write, []

    def short_write(fd: int, data) -> int:  # the kernel may take part of a buffer
        written.append(len(data))
        return real_write(fd, bytes(data[:3]))

    monkeypatch.setattr(atomic.os, "write", short_write)
    atomic.write_bytes_atomic(target, b"0123456789")
    assert target.read_bytes() == b"0123456789" and written == [10, 7, 4, 1]

    def full_disk(fd: int, data) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic.write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"0123456789" and not list(tmp_path.glob(".*.tmp"))


def test_a_folder_it_creates_is_synced_into_its_parent(tmp_path, monkeypatch):
    synced = []
    real = atomic.fsync_path
    monkeypatch.setattr(atomic, "fsync_path", lambda p: (synced.append(str(p)), real(p)))
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "masks" / "study" / "a.png"
    atomic.write_bytes_atomic(target, b"png")
    # the new folders' names (in out, then masks), then the folder holding the file (the
    # file itself is fsync'ed through its descriptor: the test above)
    new_names = [str(tmp_path / "out"), str(tmp_path / "out" / "masks")]
    assert synced == [*new_names, str(target.parent)] and target.read_bytes() == b"png"
    synced.clear()
    atomic.write_bytes_atomic(target.with_name("b.png"), b"png")  # folders there: no extra
    assert synced == [str(target.parent)]
    synced.clear()
    with atomic.atomic_path(target.with_name("c.png")) as tmp:  # by name: file and folder
        tmp.write_bytes(b"png")
    assert synced[0].endswith(".tmp") and synced[1:] == [str(target.parent)]
    synced.clear()
    atomic.write_bytes_atomic(tmp_path / "scratch2" / "d.png", b"d", durable=False)
    assert synced == [] and (tmp_path / "scratch2" / "d.png").read_bytes() == b"d"
    with atomic.atomic_path(tmp_path / "scratch" / "c.txt", durable=False) as tmp:
        tmp.write_text("c")
    assert synced == [] and (tmp_path / "scratch" / "c.txt").is_file()


def test_a_file_in_the_way_of_a_folder_is_named(tmp_path):
    (tmp_path / "masks").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="masks"):
        atomic.write_bytes_atomic(tmp_path / "masks" / "a.png", b"png")
