"""What the node does with received instances: select, segment, write results, send them.

:class:`Processor` turns a ready series of ``spool/incoming`` into ``spool/outbox`` entries
(one DICOM SEG per selected image, the same object ``lungseg segment`` writes) and logs
skipped images with the rule that skipped them; :class:`Sender` delivers outbox entries by
C-STORE to every destination, retrying with exponential back-off, and copies them to the
output folder when one is configured.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.dicom_node.config import NodeConfig
from pipeline.dicom_node.spool import Spool


def selection_reason(ds: Any, config: NodeConfig) -> str | None:
    """Why an instance is not segmented under ``config.selection`` (None: it is)."""
    sel = config.selection
    modality = str(ds.get("Modality", "")).upper()
    if modality not in sel.modalities:
        return f"Modality {modality!r} is not one of {list(sel.modalities)} (selection.modalities)"
    view = str(ds.get("ViewPosition", "")).upper()
    if view in sel.exclude_view_positions:
        return f"ViewPosition {view!r} is excluded (selection.exclude_view_positions)"
    types = {str(t).upper() for t in (ds.get("ImageType") or [])}
    excluded = types & set(sel.exclude_image_types)
    if excluded:
        return f"ImageType {sorted(excluded)} is excluded (selection.exclude_image_types)"
    return None


class Processor:
    """Segments the instances of ready series into outbox entries.

    Args:
        config: the node configuration.
        spool: the node's spool.
        model: a :class:`~pipeline.inference.predictor.Predictor` (default: the configured
            bundle on the configured device).
    """

    def __init__(self, config: NodeConfig, spool: Spool, model: Any = None):
        from pipeline.inference.predictor import Predictor

        self.config, self.spool = config, spool
        self.model = model or Predictor(config.bundle, config.device)
        self.identity = self.model.identity

    def run_once(self) -> int:
        """Process every ready series; return how many instances were handled."""
        handled = 0
        for series in self.spool.ready_series(self.config.idle_seconds):
            for path in self.spool.instances(series):
                self.process(path)
                handled += 1
            self.spool.forget_if_empty(series)
        return handled

    def process(self, path: Path) -> None:
        """Select, segment and queue the results of one received instance; never raises."""
        import pydicom

        start = time.perf_counter()
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            uids = _uids(ds)
        except Exception as err:  # unreadable header: keep the file in failed/ with the reason
            self._failed(path, path.stem, f"header cannot be read: {err}", {}, start)
            return
        if (self.spool.outbox / uids["sop"]).exists():  # done before a crash
            path.unlink(missing_ok=True)
            return
        reason = selection_reason(ds, self.config)
        if reason is None:
            try:
                results = self._segment(path, ds)
            except Exception as err:  # a decoding or model failure: failed/, the node goes on
                self._decided(path, uids, err, start)
                return
            self.spool.put_results(uids["sop"], results)
            seconds = round(time.perf_counter() - start, 3)
            self.spool.audit("segmented", **uids, model=self.identity.digest, seconds=seconds)
        else:
            self.spool.audit("skipped", **uids, reason=reason)
        path.unlink(missing_ok=True)

    def _decided(self, path: Path, uids: dict[str, str], err: Exception, start: float) -> None:
        from pipeline.io.errors import InputError

        if isinstance(err, InputError) and err.status == "skipped":
            self.spool.audit("skipped", **uids, reason=err.reason)
            path.unlink(missing_ok=True)
        else:
            reason = err.reason if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
            self._failed(path, uids["sop"], reason, uids, start)

    def _failed(self, path: Path, sop: str, reason: str, uids: dict, start: float) -> None:
        self.spool.fail(path, sop, reason)
        self.spool.audit(
            "failed", **uids, reason=reason, seconds=round(time.perf_counter() - start, 3)
        )

    def _segment(self, path: Path, ds: Any) -> dict[str, bytes]:
        """The SEG (and SR) of one image, as ``{file name: encoded bytes}``."""
        from pipeline.inference.outputs import encode_dicom, seg_of

        m = self.model.predict_items([self.model.load(path)])[0].measures
        seg = seg_of(ds, m, self.identity)
        results = {"seg.dcm": encode_dicom(seg)}
        if self.config.sr:
            results.update(self._report(ds, seg, m))
        return results

    def _report(self, ds: Any, seg: Any, m: Any) -> dict[str, bytes]:
        """The TID 1500 SR of the lung areas (none, audited, when the spacing is unknown)."""
        from pipeline.inference.outputs import encode_dicom, sr_of

        try:
            return {"sr.dcm": encode_dicom(sr_of(ds, seg, m, self.identity))}
        except ValueError as err:
            self.spool.audit("sr_skipped", sop=str(ds.SOPInstanceUID), reason=str(err))
            return {}


def _uids(ds: Any) -> dict[str, str]:
    return {
        "study": str(ds.get("StudyInstanceUID", "")),
        "series": str(ds.get("SeriesInstanceUID", "")),
        "sop": str(ds.SOPInstanceUID),
        "sop_class": str(ds.get("SOPClassUID", "")),
    }


#: Outbox entries sent per association (bounds the datasets held in memory at once).
BATCH = 64


class Sender:
    """Delivers outbox entries to every destination, DICOMweb and the output folder.

    Each round sends every due entry to a destination in one association, file by file: a file
    the destination acknowledged is never sent to it again. A file it refuses for good (no
    presentation context for the object's SOP class, a status no retry changes) is audited once
    as ``refused`` with the reason and not tried again. Other failures (association refused or
    aborted, out of resources) are retried after ``retry_seconds · 2^attempt`` (at most 5
    minutes): one attempt and ``retries`` retries per node run; after that the entry stays in
    the outbox, the last failure audited with ``last_attempt``, and it is tried again at the
    next start (nothing is dropped).
    """

    def __init__(self, config: NodeConfig, spool: Spool):
        self.config, self.spool = config, spool
        self._attempts: dict[tuple[str, str], tuple[int, float]] = {}

    def run_once(self) -> int:
        """Try every pending entry whose back-off has passed; return how many were delivered."""
        entries = list(self.spool.pending_results())
        if self.config.output_dir is not None:
            for entry in entries:
                if not self.spool.sent_to(entry, "folder"):
                    self._copy(entry, sorted(entry.glob("*.dcm")))
        targets = self._targets()
        for key, send in targets:
            due = [e for e in entries if not self.spool.sent_to(e, key) and self._due(e, key)]
            if due:
                self._send(key, send, due[:BATCH])
        delivered = 0
        for entry in entries:
            if all(self.spool.sent_to(entry, key) for key, _ in targets):
                shutil.rmtree(entry, ignore_errors=True)
                self.spool.audit("delivered", sop=entry.name)
                delivered += 1
        return delivered

    def _targets(self) -> list[tuple[str, Any]]:
        """``(key, send({entry: files}) -> {entry: error or None})`` for each target."""
        out = [
            (
                f"{d.ae_title}@{d.host}:{d.port}",
                lambda batch, stored, d=d: send_entries(batch, d, self.config.ae_title, stored),
            )
            for d in self.config.destinations
        ]
        if self.config.dicomweb_url:
            url = self.config.dicomweb_url
            out.append(("dicomweb", lambda batch, stored: _stow_batch(batch, url, stored)))
        return out

    def _due(self, entry: Path, key: str) -> bool:
        """Whether ``entry`` may be tried now: ``1 + retries`` attempts, back-off between."""
        attempts, not_before = self._attempts.get((entry.name, key), (0, 0.0))
        return attempts <= self.config.retries and time.time() >= not_before

    def _send(self, key: str, send: Any, entries: list[Path]) -> None:
        """Send the files of ``entries`` not yet taken by ``key``; record each file's outcome."""
        batch = {
            e: [f for f in sorted(e.glob("*.dcm")) if not self.spool.file_done(e, key, f.name)]
            for e in entries
        }
        start = time.perf_counter()

        def stored(entry: Path, name: str) -> None:  # durably, right after the acknowledgement
            self.spool.mark_sent(entry, key, name)
            seconds = round(time.perf_counter() - start, 3)
            self.spool.audit("sent", sop=entry.name, destination=key, file=name, seconds=seconds)

        try:
            outcomes = send(batch, stored)
        except Exception as err:  # never let one round spin: every file gets a retry reason
            reason = f"{type(err).__name__}: {err}"
            outcomes = {e: {f.name: reason for f in files} for e, files in batch.items()}
        for entry, per_file in outcomes.items():
            self._record(entry, key, per_file)

    def _record(self, entry: Path, key: str, per_file: dict[str, Any]) -> None:
        failed = []
        for name, outcome in per_file.items():
            if outcome is None:  # recorded by ``stored`` when it was acknowledged
                continue
            if isinstance(outcome, Refused):
                self.spool.mark_refused(entry, key, name, outcome.reason)
                self.spool.audit(
                    "refused", sop=entry.name, destination=key, file=name, reason=outcome.reason
                )
            else:
                failed.append(f"{name}: {outcome}")
        if failed:
            attempts = self._attempts.get((entry.name, key), (0, 0.0))[0]
            delay = min(300.0, self.config.retry_seconds * 2**attempts)
            self._attempts[(entry.name, key)] = (attempts + 1, time.time() + delay)
            self.spool.audit(
                "send_failed",
                sop=entry.name,
                destination=key,
                reason="; ".join(failed),
                attempt=attempts + 1,
                last_attempt=attempts + 1 > self.config.retries,
            )

    def _copy(self, entry: Path, files: list[Path]) -> None:
        from pipeline.io.atomic import atomic_path

        for path in files:
            target = self.config.output_dir / entry.name / path.name
            with atomic_path(target) as tmp:
                shutil.copyfile(path, tmp)
        self.spool.mark_sent(entry, "folder")


#: C-STORE statuses that mean stored: success and the warnings (coercion, elements discarded).
STORED = (0x0000, 0xB000, 0xB006, 0xB007)


@dataclass(frozen=True)
class Refused:
    """A destination's final refusal of one object (not retried): the reason it gave."""

    reason: str


#: C-STORE failure statuses that no retry changes: SOP class not supported, not authorised,
#: data set does not match the SOP class (A9xx), cannot understand (Cxxx).
def _permanent(status: int) -> bool:
    return status in (0x0122, 0x0124) or status >> 8 in (0xA9,) or status >> 12 == 0xC


def send_entries(
    batch: dict[Path, list[Path]], dest: Any, calling_aet: str, stored: Any = None
) -> dict:
    """C-STORE the files of every entry to ``dest`` in one association.

    ``stored(entry, file name)`` is called as soon as each file is acknowledged, so a crash in
    the middle of a batch resends at most the file being stored.

    Returns:
        ``{entry: {file name: None (stored) | Refused | reason to retry}}``.
    """
    import pydicom
    from pynetdicom import AE

    datasets = {e: {f.name: pydicom.dcmread(f) for f in files} for e, files in batch.items()}
    ae = AE(ae_title=calling_aet)
    for context in sorted(
        {
            (d.SOPClassUID, d.file_meta.TransferSyntaxUID)
            for named in datasets.values()
            for d in named.values()
        }
    ):
        ae.add_requested_context(*context)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        reason = f"association with {dest.ae_title}@{dest.host}:{dest.port} not established"
        return {e: dict.fromkeys(named, reason) for e, named in datasets.items()}
    try:
        out: dict[Path, dict[str, Any]] = {}
        for entry, named in datasets.items():
            out[entry] = {}
            for name, ds in named.items():
                out[entry][name] = outcome = _store(assoc, ds, dest)
                if outcome is None and stored is not None:
                    stored(entry, name)
        return out
    finally:
        if assoc.is_established:
            assoc.release()


def _store(assoc: Any, ds: Any, dest: Any) -> str | Refused | None:
    """One C-STORE: None when stored, :class:`Refused` for good, else a reason to retry."""
    if not assoc.is_established:
        return "the association was aborted before this object was sent"
    try:
        rsp = assoc.send_c_store(ds)
    except ValueError as err:  # no accepted presentation context for this SOP class
        name = getattr(ds.SOPClassUID, "name", str(ds.SOPClassUID))
        return Refused(
            f"{dest.ae_title} accepted no presentation context for {name} "
            f"({ds.SOPClassUID}): it does not store this kind of object ({err})"
        )
    except RuntimeError as err:  # the association ended under us
        return f"association ended: {err}"
    code = getattr(rsp, "Status", None)
    if code in STORED:
        return None
    if code is None:
        return "no C-STORE response (association aborted or timed out)"
    if _permanent(code):
        return Refused(
            f"{dest.ae_title} answered C-STORE status 0x{code:04X} for {ds.SOPInstanceUID}"
        )
    return f"C-STORE of {ds.SOPInstanceUID} answered status 0x{code:04X}"


def _stow_batch(batch: dict[Path, list[Path]], url: str, stored: Any = None) -> dict:
    """``{entry: {file name: None | reason}}`` of storing each entry's files by STOW-RS."""
    out = {}
    for entry, files in batch.items():
        error = stow_files(files, url) if files else None
        out[entry] = {f.name: error for f in files}
        for f in files if error is None and stored is not None else []:
            stored(entry, f.name)
    return out


def stow_files(files: list[Path], url: str) -> str | None:
    """Store ``files`` by STOW-RS at the DICOMweb service ``url``; None on success."""
    import pydicom
    from dicomweb_client.api import DICOMwebClient

    try:
        DICOMwebClient(url=url).store_instances([pydicom.dcmread(f) for f in files])
    except Exception as err:  # HTTP and connection errors: retried by the caller
        return f"STOW-RS to {url}: {type(err).__name__}: {err}"
    return None
