"""Web viewer: upload a chest X-ray in the browser, see the lungs (``lungseg serve``)."""

from pipeline.web.app import create_app
from pipeline.web.service import ResultFile, UploadError, UploadService
from pipeline.web.store import ResultStore

__all__ = ["ResultFile", "ResultStore", "UploadError", "UploadService", "create_app"]
