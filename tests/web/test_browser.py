"""The viewer in a real headless browser: Debian's chromium driven by Playwright.

Runs where chromium is installed (``make test-deps`` installs it; CI runs that first) and is
skipped elsewhere, except in CI, where a missing browser fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.io.convert import DicomVariant, build_dicom, write_dicom
from pipeline.training.data import load_split
from tests.conftest import free_port, load_png

CHROMIUM = os.environ.get("LUNGSEG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file() and not os.environ.get("CI"),
        reason="chromium not installed (make test-deps)",
    ),
]
PATIENT = "Roe^Richard"


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"lungseg serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                return json.load(response)
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"lungseg serve did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``lungseg serve`` in its own process on a free port; its log file."""
    port, log = free_port(), tmp_path_factory.mktemp("server") / "serve.log"
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", "--port", str(port), "--device", "cpu"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        yield {"url": url, "health": _wait_healthy(url, proc, log), "log": log}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context(viewport={"width": 1366, "height": 768})
        yield context.new_page()
        browser.close()


@pytest.fixture(scope="module")
def dicom_file(data_dir, tmp_path_factory) -> Path:
    """A held-out case as a JPEG 2000 DICOM with spacing and a patient name in its file name."""
    case = load_split(data_dir, "test", 1)[0]
    ds = build_dicom(load_png(Path(case["image"])), DicomVariant.JPEG2000, spacing_mm=0.35)
    ds.PatientName = PATIENT
    path = tmp_path_factory.mktemp("upload") / "Roe_Richard.dcm"
    write_dicom(ds, path)
    return path


def _api_result(url: str, path: Path) -> dict:
    """The same file through the JSON API, with the standard library's HTTP client."""
    boundary = "lungsegtestboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.dcm"\r\n'
            "Content-Type: application/dicom\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        url + "/api/segment",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def _overlay_opacity(page) -> str:
    return page.eval_on_selector("#overlay", "img => getComputedStyle(img).opacity")


def test_upload_a_dicom_and_see_overlay_areas_and_downloads(server, page, dicom_file, tmp_path):
    page.goto(server["url"])
    assert page.title().startswith("lungseg")
    page.set_input_files("#file", str(dicom_file))
    page.wait_for_selector("#result", state="visible", timeout=120_000)
    page.wait_for_function(
        "['image', 'overlay'].every(id => document.getElementById(id).complete"
        " && document.getElementById(id).naturalWidth > 0)"
    )
    expected = _api_result(server["url"], dicom_file)
    for side in ("right", "left", "total"):
        mm2 = expected["areas"][f"{side}_mm2"]
        assert page.text_content(f"#area-{side}").startswith(f"{mm2 / 100:.1f} cm²")
        assert page.text_content(f"#px-{side}").replace(",", "") == str(
            expected["areas"][f"{side}_px"]
        )
    assert page.text_content("#flags") == "No QA flag raised"
    assert page.text_content("#input-format") == "DICOM"
    assert page.is_visible("#download-seg") and page.is_visible("#download-mask")
    assert page.get_attribute("#download-seg", "download") == "Roe_Richard_lungseg.dcm"
    with page.expect_download() as download:
        page.click("#download-mask")
    assert download.value.suggested_filename == "Roe_Richard_lungmask.png"
    page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
    assert (tmp_path / "viewer.png").stat().st_size > 10_000


def test_overlay_toggle_and_opacity(server, page, dicom_file):
    if not page.is_visible("#result"):
        page.goto(server["url"])
        page.set_input_files("#file", str(dicom_file))
        page.wait_for_selector("#result", state="visible", timeout=120_000)
    assert _overlay_opacity(page) == "0.4"
    page.fill("#opacity", "75")
    assert _overlay_opacity(page) == "0.75" and page.text_content("#opacity-value") == "75%"
    page.uncheck("#overlay-toggle")
    assert _overlay_opacity(page) == "0"
    page.check("#overlay-toggle")
    assert _overlay_opacity(page) == "0.75"


def test_a_non_image_shows_the_reason_on_the_page(server, page, tmp_path):
    junk = tmp_path / "Roe_Richard_letter.txt"
    junk.write_text("Dear Dr ...")
    page.goto(server["url"])
    page.set_input_files("#file", str(junk))
    page.wait_for_selector("#error", state="visible", timeout=60_000)
    text = page.text_content("#error")
    assert text.startswith("Roe_Richard_letter.txt: not an image the viewer accepts")
    assert page.is_hidden("#result")


def test_the_server_log_holds_nothing_identifying(server, page, dicom_file):
    page.goto(server["url"])
    page.set_input_files("#file", str(dicom_file))
    page.wait_for_selector("#result", state="visible", timeout=120_000)
    log = server["log"].read_text()
    assert "POST /api/segment" in log and "segmented a DICOM upload" in log
    for secret in ("Roe", "Richard"):
        assert secret not in log
