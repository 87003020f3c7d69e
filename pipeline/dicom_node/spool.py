"""The node's durable state on disk: received instances, results to send, failures, audit.

```
spool/
  incoming/<study>/<series>/<sop>.dcm    received, fsync'ed before the C-STORE is acknowledged
  incoming/<study>/<series>/.released    an association that sent to this series ended
  outbox/<sop>/<file>.dcm                results of one source instance, waiting to be sent
  outbox/<sop>/.sent-<destination>       a destination that acknowledged every file
  outbox/<sop>/.sent-<dest>--<file>.ok    ... that acknowledged one file
  outbox/<sop>/.refused-<dest>--<file>.why  ... that refused one file for good (the reason)
  failed/<sop>.dcm + failed/<sop>.json   inputs that could not be processed, with the reason
  audit.jsonl                            one line per event: UIDs, AE titles, timings, status
```

Every step is a rename or an ``O_APPEND`` line, so a crash at any point leaves either the
state before or after the step; a restart continues from what is there. An input is deleted
only after its results are in ``outbox/``; an outbox entry only after every destination
acknowledged it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

_UID = re.compile(r"^[0-9.]{1,64}$")


def safe_uid(uid: str, what: str) -> str:
    """A UID usable as a file name.

    Raises:
        ValueError: not a DICOM UID (digits and dots, at most 64), quoting it.
    """
    uid = str(uid).strip()
    if not _UID.match(uid):
        raise ValueError(f"{what} {uid!r} is not a DICOM UID (digits and dots, <= 64 chars)")
    return uid


def _fsync_write(path: Path, data: bytes, attempts: int = 3) -> None:
    """Write ``data`` to ``path`` durably (:func:`pipeline.io.atomic.write_bytes_atomic`).

    The folder is created again if it vanishes before the file is in it (the processor
    removes empty series folders while instances arrive).
    """
    from pipeline.io.atomic import write_bytes_atomic

    for attempt in range(attempts):
        try:
            write_bytes_atomic(path, data)
            return
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise


class Spool:
    """The folders of :mod:`pipeline.dicom_node.spool` under ``root``."""

    def __init__(self, root: str | os.PathLike):
        from pipeline.io.atomic import make_folders

        self.root = Path(root)
        self.incoming, self.outbox, self.failed = (
            self.root / d for d in ("incoming", "outbox", "failed")
        )
        for folder in (self.incoming, self.outbox, self.failed):
            make_folders(folder)
        self._audit_lock = threading.Lock()

    # --- receiving ------------------------------------------------------------------------

    def store(self, study: str, series: str, sop: str, data: bytes) -> Path:
        """Durably keep a received instance (encoded as a DICOM file); return its path."""
        folder = (
            self.incoming
            / safe_uid(study, "StudyInstanceUID")
            / safe_uid(series, "SeriesInstanceUID")
        )
        path = folder / f"{safe_uid(sop, 'SOPInstanceUID')}.dcm"
        _fsync_write(path, data)
        return path

    def release(self, study: str, series: str) -> None:
        """Mark a series as complete for now (its association was released)."""
        folder = self.incoming / study / series
        if folder.is_dir():
            (folder / ".released").touch()

    def ready_series(self, idle_seconds: float, now: float | None = None) -> list[Path]:
        """Series folders released, or without a new instance for ``idle_seconds``."""
        now = time.time() if now is None else now
        ready = []
        for series in sorted(p for p in self.incoming.glob("*/*") if p.is_dir()):
            files = list(series.glob("*.dcm"))
            if not files:
                continue
            newest = max(f.stat().st_mtime for f in files)
            if (series / ".released").exists() or now - newest >= idle_seconds:
                ready.append(series)
        return ready

    @staticmethod
    def instances(series: Path) -> list[Path]:
        """The instances of a series folder, in name order."""
        return sorted(series.glob("*.dcm"))

    def forget_if_empty(self, series: Path) -> None:
        """Remove a processed series folder (and its study folder) when nothing is left in it.

        Only empty folders are removed (``rmdir``), never a tree: an instance stored into the
        series meanwhile keeps its folder and is processed in a later round.
        """
        if any(series.glob("*.dcm")):
            return
        (series / ".released").unlink(missing_ok=True)
        for folder in (series, series.parent):
            with contextlib.suppress(OSError):  # not empty (a new instance): keep it
                folder.rmdir()

    # --- results --------------------------------------------------------------------------

    def put_results(self, sop: str, files: Mapping[str, bytes]) -> Path:
        """Durably place the results of one source instance in the outbox."""
        entry = self.outbox / safe_uid(sop, "SOPInstanceUID")
        staging = self.outbox / f".{entry.name}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        for name, data in files.items():
            _fsync_write(staging / name, data)
        if entry.exists():  # a crash after the rename but before the input was deleted
            shutil.rmtree(entry)
        os.replace(staging, entry)
        return entry

    def pending_results(self) -> Iterator[Path]:
        """Outbox entries not yet delivered everywhere."""
        yield from sorted(
            p for p in self.outbox.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    @staticmethod
    def sent_to(entry: Path, destination: str) -> bool:
        """Whether ``destination`` took (or for good refused) every file of ``entry``."""
        if (entry / f".sent-{destination}").exists():
            return True
        files = [p.name for p in entry.glob("*.dcm")]
        return bool(files) and all(Spool.file_done(entry, destination, f) for f in files)

    @staticmethod
    def file_done(entry: Path, destination: str, name: str) -> bool:
        """Whether ``destination`` acknowledged or refused for good the file ``name``."""
        return any(
            (entry / f".{what}-{destination}--{name}.{tag}").exists()
            for what, tag in (("sent", "ok"), ("refused", "why"))
        )

    @staticmethod
    def mark_sent(entry: Path, destination: str, name: str | None = None) -> None:
        """Record that ``destination`` acknowledged ``name`` (None: every file of ``entry``)."""
        marker = f".sent-{destination}" if name is None else f".sent-{destination}--{name}.ok"
        _fsync_write(entry / marker, b"")

    @staticmethod
    def mark_refused(entry: Path, destination: str, name: str, reason: str) -> None:
        """Record that ``destination`` refused ``name`` for good (not tried again)."""
        _fsync_write(entry / f".refused-{destination}--{name}.why", reason.encode())

    # --- failures and audit ----------------------------------------------------------------

    def fail(self, source: Path, sop: str, reason: str) -> Path:
        """Move an input to ``failed/`` with its reason."""
        target = self.failed / f"{sop}.dcm"
        _fsync_write(self.failed / f"{sop}.json", json.dumps({"reason": reason}).encode())
        os.replace(source, target)
        return target

    def audit(self, event: str, **fields: Any) -> None:
        """Append one JSON line to ``audit.jsonl`` (UIDs and timings only, never pixels)."""
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, **fields})
        with self._audit_lock, open(self.root / "audit.jsonl", "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_audit(self) -> list[dict[str, Any]]:
        """Every audit line (tests and ``--check``)."""
        path = self.root / "audit.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
