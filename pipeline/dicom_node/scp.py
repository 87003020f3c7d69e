"""The Storage SCP: receive by C-STORE, spool durably, acknowledge; C-ECHO; worker loop.

A C-STORE is answered *Success* only after the instance is fsync'ed into the spool, so an
acknowledged instance survives a crash. Calling AE titles outside ``allowed_calling_aets`` are
rejected at association. One background thread runs the :class:`Processor` and the
:class:`Sender` in turn; on start they pick up whatever a previous run left in the spool.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pipeline.dicom_node.config import NodeConfig
from pipeline.dicom_node.spool import Spool

#: Storage status codes (PS3.4 Annex B): success, out of resources.
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700


class Node:
    """A running (or ready to run) lungseg DICOM node.

    Args:
        config: the node configuration.
        model: a loaded bundle model (default: load the configured one).
        poll_seconds: how often the worker looks for ready series and pending results.
    """

    def __init__(self, config: NodeConfig, model: Any = None, poll_seconds: float = 0.5):
        from pipeline.dicom_node.processor import Processor, Sender

        self.config, self.poll_seconds = config, poll_seconds
        self.spool = Spool(config.spool_dir)
        self.processor = Processor(config, self.spool, model)
        self.sender = Sender(config, self.spool)
        self._series_of: dict[int, set[tuple[str, str]]] = {}
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._server: Any = None

    def application_entity(self) -> Any:
        """The pynetdicom AE: every storage SOP class with every transfer syntax, plus echo."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.config.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if self.config.allowed_calling_aets is not None:
            ae.require_calling_aet = list(self.config.allowed_calling_aets)
        return ae

    def on_store(self, event: Any) -> int:
        """C-STORE handler: spool the instance durably, then acknowledge."""
        try:
            ds = event.dataset
            study, series, sop = (
                str(ds.get(k, ""))
                for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
            )
            self.spool.store(study, series, sop, event.encoded_dataset())
        except Exception as err:  # the sender learns it failed and may retry; we log why
            self.spool.audit(
                "receive_failed",
                calling_aet=event.assoc.requestor.ae_title,
                reason=f"{type(err).__name__}: {err}",
            )
            return OUT_OF_RESOURCES
        self._series_of.setdefault(id(event.assoc), set()).add((study, series))
        self.spool.audit(
            "received",
            study=study,
            series=series,
            sop=sop,
            calling_aet=event.assoc.requestor.ae_title,
        )
        return SUCCESS

    def on_released(self, event: Any) -> None:
        """The association ended: its series are complete for now."""
        for study, series in self._series_of.pop(id(event.assoc), set()):
            self.spool.release(study, series)

    def work(self) -> None:
        """The worker loop: process ready series, deliver results, until stopped."""
        while not self._stop.is_set():
            try:
                busy = self.processor.run_once() + self.sender.run_once()
            except Exception as err:  # keep serving; the reason is in the audit log
                self.spool.audit("worker_error", reason=f"{type(err).__name__}: {err}")
                busy = 0
            if not busy:
                self._stop.wait(self.poll_seconds)

    def start(self, block: bool = False) -> None:
        """Start the worker thread and the SCP (``block``: serve until interrupted)."""
        from pynetdicom import evt

        handlers = [(evt.EVT_C_STORE, self.on_store), (evt.EVT_RELEASED, self.on_released)]
        self._worker = threading.Thread(target=self.work, name="lungseg-node-worker", daemon=True)
        self._worker.start()
        model = self.processor.identity.as_dict()
        self.spool.audit(
            "started",
            ae_title=self.config.ae_title,
            port=self.config.port,
            model={k: model[k] for k in ("name", "version", "digest", "checkpoints_sha256")},
        )
        ae = self.application_entity()
        address = (self.config.host, self.config.port)
        if block:
            try:
                ae.start_server(address, block=True, evt_handlers=handlers)
            finally:
                self.stop()
        else:
            self._server = ae.start_server(address, block=False, evt_handlers=handlers)

    def stop(self) -> None:
        """Stop serving and let the worker finish its current step."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=60)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until nothing is left to process or send (tests); False on timeout."""
        end = time.time() + timeout
        while time.time() < end:
            try:
                pending = any(self.spool.incoming.glob("*/*/*.dcm")) or any(
                    self.spool.pending_results()
                )
            except FileNotFoundError:  # a folder removed while listed: look again
                pending = True
            if not pending:
                return True
            time.sleep(0.2)
        return False


def echo(dest: Any, calling_aet: str) -> str | None:
    """C-ECHO ``dest``; None on success, else the reason."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(Verification)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        return f"no association with {dest.ae_title}@{dest.host}:{dest.port}"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    return None if code == SUCCESS else f"C-ECHO answered status {code!r}"


def check_node(config: NodeConfig) -> bool:
    """``lungseg node --check``: C-ECHO every destination, load the model; print each result.

    Returns:
        Whether every destination answered.
    """
    from pipeline.inference.predictor import Predictor

    ok = True
    for dest in config.destinations:
        error = echo(dest, config.ae_title)
        print(f"destination {dest.ae_title}@{dest.host}:{dest.port}: {error or 'C-ECHO ok'}")
        ok = ok and error is None
    model = Predictor(config.bundle, config.device)
    print(f"model {model.identity.name} ({model.identity.digest[:12]}) on {model.device}: ok")
    return ok
