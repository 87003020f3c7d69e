"""The batch's journal (resume after a crash) and its report (CSV, JSON lines, summary)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.enums import Status
from pipeline.io.atomic import atomic_path, sync_folders

#: Columns of ``report.csv`` (``report.jsonl`` has the same keys), in order.
REPORT_FIELDS = (
    "path",
    "status",
    "reason",
    "sop_instance_uid",
    "rows",
    "columns",
    "pixel_spacing_mm",
    "pixel_spacing_source",
    "right_area_px",
    "left_area_px",
    "total_area_px",
    "right_area_mm2",
    "left_area_mm2",
    "total_area_mm2",
    "mean_confidence",
    "qa_flags",
    "seconds",
)

#: Columns added by ``lungseg segment --tb`` (research only, said in ``tb_note`` on every row).
TB_FIELDS = ("tb_score", "tb_flag", "tb_note")

JOURNAL = "journal{tag}.jsonl"


class JournalMismatchError(ValueError):
    """The output folder holds a run made with other settings (model or formats)."""


class Journal:
    """Append-only record of finished inputs; a rerun skips what it lists.

    The first line holds the run's settings (model checksum, formats, start time); each
    following line is one finished input's report row. :meth:`record` keeps it until
    :meth:`sync` (the batch job calls it once per batch), which first fsyncs the folders its
    outputs were renamed into (``folders``: renames whose folder fsync was deferred,
    :func:`~pipeline.io.atomic.deferred_folder_syncs`), then writes and fsyncs the lines:
    a line on disk always means outputs on disk. A kill or a power loss forgets at most the
    inputs in flight and one batch's lines; those inputs are redone.

    Args:
        out_dir: the batch's output folder.
        header: settings of this run (must match a journal found there).
        overwrite: start afresh even if a journal exists.
        tag: file name suffix (``-shard-2-of-4``), so shards can share one output folder.

    Raises:
        JournalMismatchError: a journal with other settings exists and ``overwrite`` is off.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        header: dict[str, Any],
        overwrite: bool = False,
        tag: str = "",
    ):
        self.path = Path(out_dir) / JOURNAL.format(tag=tag)
        self.rows: dict[str, dict[str, Any]] = {}
        self.sources: dict[str, list[int]] = {}
        self.header = dict(header)
        self.resumed = self.path.is_file() and not overwrite
        if self.resumed:
            self._load(header)
        else:
            with atomic_path(self.path) as tmp:  # creates OUT, durably
                Path(tmp).write_text(json.dumps({"run": self.header}) + "\n")
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for appends)
        self._lines: list[str] = []  # recorded, not yet written (see sync)
        self._folders: set[str] = set()  # their outputs' folders, not yet fsync'ed

    def _load(self, header: dict[str, Any]) -> None:
        self._drop_cut_line()
        lines = self.path.read_text(encoding="utf-8").splitlines()
        previous = json.loads(lines[0])["run"] if lines else {}
        for key in ("model_digest", "formats", "tb"):  # the digest covers the checkpoints
            if previous.get(key) != header.get(key):
                raise JournalMismatchError(
                    f"{self.path}: this folder holds a run with {key}={previous.get(key)!r}, "
                    f"not {header.get(key)!r}; use --overwrite to redo it or another -o folder"
                )
        self.header = {**header, "started": previous.get("started", header.get("started"))}
        for line in lines[1:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: that input is simply redone
            self.rows[row["key"]] = row["row"]
            self.sources.pop(row["key"], None)
            if row.get("source") is not None:
                self.sources[row["key"]] = row["source"]

    def _drop_cut_line(self) -> None:
        """Truncate a last line a kill cut short, so the next record starts a line of its own."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)
                os.fsync(fh.fileno())

    def done(self, key: str, signature: Callable[[], list[int] | None] | None = None) -> bool:
        """Whether ``key`` finished in this or an earlier run.

        Args:
            key: the input.
            signature: gives the input file's signature now; where ``key``'s line recorded
                one (an input that failed), it is done only while the two agree.
        """
        if key not in self.rows:
            return False
        recorded = self.sources.get(key)
        return recorded is None or signature is None or signature() == recorded

    def record(
        self,
        key: str,
        row: dict[str, Any],
        sync: bool = True,
        source: list[int] | None = None,
        folders: Iterable[str] = (),
    ) -> None:
        """Record one finished input (written and fsync'ed now, or by :meth:`sync`).

        Args:
            key: the input.
            row: its report row.
            sync: write it to disk now.
            source: the input file's signature as it was read, for a row that failed (see
                :meth:`done`).
            folders: folders holding its outputs whose fsync was deferred.
        """
        self.rows[key] = row
        self.sources.pop(key, None)
        line = {"key": key, "row": row}
        if source is not None:
            self.sources[key] = line["source"] = source
        self._lines.append(json.dumps(line) + "\n")
        self._folders.update(folders)
        if sync:
            self.sync()

    def sync(self) -> None:
        """Write the lines recorded since the last sync, durably, after their outputs' folders.

        One fsync per folder and one for the journal; none without lines.
        """
        if not self._lines:
            return
        sync_folders(self._folders)
        self._folders.clear()
        self._fh.write("".join(self._lines))
        self._fh.flush()
        self._lines.clear()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Make the recorded lines durable and close the journal file."""
        if not self._fh.closed:
            self.sync()
            self._fh.close()


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"  # NaN -> empty
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    return "" if value is None else value


def write_reports(
    out_dir: str | os.PathLike, rows: Iterable[Mapping[str, Any]], tag: str = ""
) -> None:
    """Write ``report{tag}.csv`` and ``report{tag}.jsonl`` (rows sorted by path), atomically.

    The :data:`TB_FIELDS` columns are there when any row has a TB score.
    """
    ordered = sorted(rows, key=lambda r: r["path"])
    fields = REPORT_FIELDS + (TB_FIELDS if any("tb_score" in r for r in ordered) else ())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in ordered:
        writer.writerow({k: _cell(row.get(k)) for k in fields})
    with atomic_path(Path(out_dir) / f"report{tag}.csv") as tmp:
        Path(tmp).write_text(text.getvalue(), encoding="utf-8")
    lines = [json.dumps({k: _json(row.get(k)) for k in fields}) for row in ordered]
    with atomic_path(Path(out_dir) / f"report{tag}.jsonl") as tmp:
        Path(tmp).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _json(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else value


def tallies(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """How many segmented rows raised each QA flag and took their spacing from each source.

    For ``summary.json``: a batch's QA flags (``inverted_polarity``, ``upside_down``,
    ``small_for_hemithorax``...) and the spacing its mm² areas stand on, at a glance.
    """
    flags: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    for r in rows:
        if r.get("status") == Status.OK.value:
            flags.update(r.get("qa_flags") or [])
            sources[str(r.get("pixel_spacing_source") or "none")] += 1
    return {"qa_flags": dict(sorted(flags.items())), "pixel_spacing_sources": dict(sources)}


def write_summary(out_dir: str | os.PathLike, summary: Mapping[str, Any], tag: str = "") -> None:
    """Write ``summary{tag}.json`` atomically."""
    with atomic_path(Path(out_dir) / f"summary{tag}.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
