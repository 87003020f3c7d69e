"""Web viewer: upload a chest X-ray in the browser, see the lungs (``lungseg serve``)."""

from pipeline.serve.app import create_app
from pipeline.serve.service import ResultFile, UploadError, UploadService
from pipeline.serve.store import ResultStore

__all__ = ["ResultFile", "ResultStore", "UploadError", "UploadService", "create_app"]
