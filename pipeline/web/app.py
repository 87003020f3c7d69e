"""The web viewer's HTTP layer: one page, a JSON API beside it, and its OpenAPI schema.

``POST /api/segment`` takes one file (multipart field ``file``), writes it to a private
temporary folder (mode 0700) that is removed when the request ends, and answers with the
areas, QA flags and links to the result's files, which stay in memory
(:class:`~pipeline.web.store.ResultStore`) for a limited time. Nothing identifying is
logged: not the file name, not a DICOM attribute; log lines carry the format, the size, the
time and the flags.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline import __version__
from pipeline.web.service import ResultFile, UploadError, UploadService
from pipeline.web.store import ResultStore

log = logging.getLogger("lungseg.serve")
#: Log levels of ``lungseg serve``: the viewer's and the HTTP server's own lines; other
#: libraries only warnings (highdicom, for one, logs the source's UIDs at INFO).
LOG_LEVELS = {"": logging.WARNING, "lungseg": logging.INFO, "uvicorn": logging.INFO}


def configure_logging() -> None:
    """Set :data:`LOG_LEVELS`, with timestamps, on the standard error stream."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, level in LOG_LEVELS.items():
        logging.getLogger(name).setLevel(level)


STATIC = Path(__file__).with_name("static")
MiB = 1 << 20
#: Room for the multipart envelope around the file in a request at the upload limit.
MULTIPART_SLACK = 64 * 1024
#: Sent with every response: no sniffing, no framing, no caching of patient data.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
        "script-src 'self'; object-src 'none'; frame-ancestors 'none'"
    ),
}


class Areas(BaseModel):
    """Lung areas: pixels always, mm² when the pixel spacing is known (else null)."""

    right_px: int
    left_px: int
    total_px: int
    right_mm2: float | None
    left_mm2: float | None
    total_mm2: float | None


class Flag(BaseModel):
    """A quality flag and what it means."""

    flag: str
    message: str


class Links(BaseModel):
    """Where the result's files are (relative URLs); ``seg`` only for DICOM input."""

    image: str = Field(description="the decoded radiograph as displayed (PNG)")
    overlay: str = Field(description="right/left lung fills on a transparent background (PNG)")
    mask: str = Field(description="both lungs, 0/255, at the input's size (PNG)")
    seg: str | None = Field(description="DICOM SEG with Right lung and Left lung segments")


class ModelInfo(BaseModel):
    """The model that produced the result."""

    name: str
    version: str
    checkpoint_sha256: str
    digest: str = Field(description="hash of the checkpoint(s) and the resolved inference config")


class SegmentResponse(BaseModel):
    """One segmented radiograph."""

    id: str
    input_format: str = Field(description="DICOM, PNG or JPEG, recognised by content")
    rows: int
    columns: int
    pixel_spacing_mm: list[float] | None = Field(description="row, column; null when unknown")
    pixel_spacing_source: str
    areas: Areas
    mean_confidence: float = Field(description="mean lung probability inside the mask")
    qa_flags: list[Flag]
    seconds: float = Field(description="server processing time")
    links: Links
    seg_note: str | None = Field(
        default=None, description="why a DICOM upload has no SEG (a missing UID); else null"
    )
    expires_in_seconds: float
    model: ModelInfo


class Health(BaseModel):
    """Liveness and what the server runs."""

    status: str
    version: str
    device: str
    model: ModelInfo
    max_upload_bytes: int


class Error(BaseModel):
    """An error: what went wrong, naming the file."""

    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": Error, "description": "the upload is larger than the limit"},
    415: {"model": Error, "description": "not a DICOM, PNG or JPEG file (by content)"},
    422: {"model": Error, "description": "an image that cannot be used (with the reason)"},
}


def create_app(
    model: Any = None,
    *,
    bundle: str | None = None,
    device: str = "auto",
    max_upload_bytes: int = 64 * MiB,
    store: ResultStore | None = None,
    temp_dir: str | None = None,
    parallel: int = 2,
) -> FastAPI:
    """Build the viewer app around a model loaded once.

    Args:
        model: a :class:`~pipeline.inference.predictor.Predictor` (default: ``bundle``).
        bundle: the bundle folder when no model is given (default: the shipped one).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` when no model is given.
        max_upload_bytes: the largest file accepted.
        store: where results are kept for their links (default: 32 results, 15 minutes).
        temp_dir: parent of the per-request temporary folders (default: the system's).
        parallel: uploads processed at once (more wait their turn).
    """
    if model is None:
        from pipeline.inference.predictor import Predictor

        model = Predictor(bundle, device)
    service = UploadService(model, parallel=parallel)
    store = store if store is not None else ResultStore()
    app = FastAPI(
        title="lungseg viewer",
        version=__version__,
        description="Lung segmentation of chest radiographs (research use).",
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN: not on clinical networks
        redoc_url=None,
    )
    app.state.service, app.state.store = service, store
    app.state.max_upload_bytes, app.state.temp_dir = max_upload_bytes, temp_dir
    _add_handlers(app, max_upload_bytes + MULTIPART_SLACK)
    _add_routes(app, max_upload_bytes + MULTIPART_SLACK)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _error(app: FastAPI, status: int, detail: str, headers: Any = None) -> JSONResponse:
    """The JSON error answer; a 413 always states the limit."""
    if status == 413:
        log.info("refused an upload: 413 (over %d bytes)", app.state.max_upload_bytes)
        limit = app.state.max_upload_bytes / MiB
        detail = f"the upload is larger than the limit of {limit:.3g} MB"
    return JSONResponse({"detail": detail}, status, headers=headers)


def _declared_too_large(request: Request, limit: int) -> bool:
    """Whether the request's Content-Length already exceeds ``limit`` (refused unread)."""
    length = request.headers.get("content-length", "")
    return length.isdigit() and int(length) > limit


def _add_handlers(app: FastAPI, body_limit: int) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        # A body that streams past the limit is stopped by the route's max_body_size.
        if _declared_too_large(request, body_limit):
            response: Response = _error(app, 413, "")
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(app, exc.status_code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, 422)


def _add_routes(app: FastAPI, body_limit: int) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", response_model=Health, summary="liveness and model identity")
    def healthz() -> dict[str, Any]:
        service = app.state.service
        return {
            "status": "ok",
            "version": __version__,
            "device": str(service.model.device),
            "model": _model_info(service),
            "max_upload_bytes": app.state.max_upload_bytes,
        }

    @app.post(
        "/api/segment",
        response_model=SegmentResponse,
        responses=ERRORS,
        summary="segment the lungs of one chest radiograph",
        max_body_size=body_limit,
    )
    def segment(
        file: Annotated[UploadFile, File(description="a DICOM, PNG or JPEG chest radiograph")],
    ) -> dict[str, Any]:
        return _segment(app, file)

    @app.get(
        "/api/results/{result_id}/{name}",
        responses={404: {"model": Error, "description": "unknown or expired result"}},
        response_class=Response,
        summary="a file of a recent result",
    )
    def result_file(result_id: str, name: ResultFile) -> Response:
        result = app.state.store.get(result_id)
        data = None if result is None else result.files.get(name)
        if data is None:
            what = "result" if result is None else f"{name} (only DICOM input has a SEG)"
            raise HTTPException(404, f"no such {what}; results are kept for a limited time")
        headers = {"Cache-Control": "no-store"}
        if name in (ResultFile.MASK, ResultFile.SEG):
            # no file name here: the page's download attribute names it after the upload
            headers["Content-Disposition"] = "attachment"
        return Response(data, media_type=name.media_type, headers=headers)


def _model_info(service: UploadService) -> dict[str, str]:
    ident = service.identity
    return {k: str(ident[k] or "") for k in ("name", "version", "checkpoint_sha256", "digest")}


def _segment(app: FastAPI, file: UploadFile) -> dict[str, Any]:
    """Save the upload privately, segment it, store the result, answer with its summary."""
    name = Path(file.filename or "upload").name
    limit = app.state.max_upload_bytes
    if file.size is not None and file.size > limit:
        raise HTTPException(413)
    with tempfile.TemporaryDirectory(prefix="lungseg-serve-", dir=app.state.temp_dir) as tmp:
        path = Path(tmp) / "upload"
        with open(path, "wb") as fh:
            shutil.copyfileobj(file.file, fh, 1 << 20)
        if path.stat().st_size > limit:
            raise HTTPException(413)
        try:
            result = app.state.service.process(path, name)
        except UploadError as err:
            cause = type(err.__cause__).__name__ if err.__cause__ else "type"
            log.info("refused an upload: %d (%s)", err.status_code, cause)
            raise HTTPException(err.status_code, err.reason) from err
    key = app.state.store.put(result)
    summary = result.summary
    log.info(
        "segmented a %s upload (%dx%d) in %.2f s, flags: %s",
        summary["input_format"],
        summary["rows"],
        summary["columns"],
        summary["seconds"],
        ",".join(f["flag"] for f in summary["qa_flags"]) or "none",
    )
    return _response(app, key, result)


def _response(app: FastAPI, key: str, result: Any) -> dict[str, Any]:
    def link(name: ResultFile) -> str | None:
        return f"/api/results/{key}/{name}" if name in result.files else None

    return {
        **result.summary,
        "id": key,
        "links": {f.name.lower(): link(f) for f in ResultFile},
        "expires_in_seconds": app.state.store.ttl_seconds,
        "model": _model_info(app.state.service),
    }
