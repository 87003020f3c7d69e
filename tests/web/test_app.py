"""The viewer's API through FastAPI's test client, on real held-out radiographs."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipeline.cli import EXIT_USAGE, main
from pipeline.io.convert import DicomVariant, build_dicom, write_dicom
from pipeline.training.data import load_split
from pipeline.web import ResultStore, create_app
from pipeline.web.app import LOG_LEVELS
from tests.conftest import dice_where_decided, load_png

PATIENT = "Doe^Jane"


@pytest.fixture(scope="module")
def cases(data_dir) -> list[dict]:
    """A Montgomery and a Shenzhen case of the test split (never trained on)."""
    return load_split(data_dir, "test", 2)


@pytest.fixture(scope="module")
def temp_root(tmp_path_factory) -> Path:
    """The parent of the app's per-request folders, to check they are removed."""
    return tmp_path_factory.mktemp("serve-tmp")


@pytest.fixture(scope="module")
def client(shipped_model, temp_root) -> TestClient:
    return TestClient(create_app(shipped_model, temp_dir=str(temp_root)))


@pytest.fixture(scope="module")
def dicom_upload(cases, tmp_path_factory) -> dict:
    """A MONOCHROME1 DICOM of a held-out case with 0.35 mm spacing and a patient name."""
    case = cases[0]
    ds = build_dicom(load_png(Path(case["image"])), DicomVariant.MONO1_WINDOW, spacing_mm=0.35)
    ds.PatientName, ds.PatientID = PATIENT, "PID-4711"
    path = tmp_path_factory.mktemp("upload") / "Doe_Jane_chest.dcm"
    write_dicom(ds, path)
    return {"path": path, "case": case, "dataset": ds}


def post(client: TestClient, name: str, data: bytes, media: str = "application/octet-stream"):
    return client.post("/api/segment", files={"file": (name, data, media)})


def reference(case: dict) -> np.ndarray:
    return load_png(Path(case["label"])) > 127


def png_of(content: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(content)) as img:
        return np.asarray(img)


def test_a_dicom_without_a_series_uid_gets_its_areas_and_a_note_instead_of_a_seg(
    client, dicom_upload, tmp_path
):
    ds = copy.deepcopy(dicom_upload["dataset"])
    del ds.SeriesInstanceUID
    write_dicom(ds, tmp_path / "no-series.dcm")
    response = post(client, "no-series.dcm", (tmp_path / "no-series.dcm").read_bytes())
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["links"]["seg"] is None and result["links"]["mask"] is not None
    assert result["seg_note"] == (
        "no SEG: the source has no SeriesInstanceUID, by which a SEG must reference it"
    )
    assert result["areas"]["total_mm2"] > 0


def test_png_upload_returns_areas_and_a_mask_matching_the_reference(client, cases, temp_root):
    for case in cases:
        path = Path(case["image"])
        response = post(client, path.name, path.read_bytes(), "image/png")
        assert response.status_code == 200, response.text
        result = response.json()
        areas = result["areas"]
        assert result["input_format"] == "PNG" and result["links"]["seg"] is None
        assert areas["right_px"] > 0 and areas["left_px"] > 0
        assert areas["total_px"] == areas["right_px"] + areas["left_px"]
        assert areas["total_mm2"] is None and result["pixel_spacing_mm"] is None
        mask = png_of(client.get(result["links"]["mask"]).content) > 127
        assert mask.shape == (result["rows"], result["columns"]) == reference(case).shape
        assert mask.sum() == areas["total_px"]
        assert dice_where_decided(mask, reference(case)) >= 0.95, path.name
    assert list(temp_root.iterdir()) == []  # every upload folder removed


def test_page_image_and_overlay_line_up_with_the_result(client, cases):
    result = post(client, "a.png", Path(cases[1]["image"]).read_bytes()).json()
    image = png_of(client.get(result["links"]["image"]).content)
    overlay = png_of(client.get(result["links"]["overlay"]).content)
    assert image.shape == (512, 512) and overlay.shape == (512, 512, 4)
    right = (overlay[..., 3] > 0) & (overlay[..., 0] == 0)
    left = (overlay[..., 3] > 0) & (overlay[..., 0] == 255)
    assert right.sum() == result["areas"]["right_px"]
    assert left.sum() == result["areas"]["left_px"]
    # the patient's right lung is on the image's left in a PA view
    assert np.argwhere(right)[:, 1].mean() < np.argwhere(left)[:, 1].mean()


def test_display_images_are_downscaled_but_the_mask_keeps_the_input_size(shipped_model, cases):
    from pipeline.web import ResultFile, UploadService

    path = Path(cases[0]["image"])
    result = UploadService(shipped_model, display_max_size=256).process(path, path.name)
    assert png_of(result.files[ResultFile.IMAGE]).shape == (256, 256)
    assert png_of(result.files[ResultFile.OVERLAY]).shape == (256, 256, 4)
    mask = png_of(result.files[ResultFile.MASK]) > 127
    assert dice_where_decided(mask, reference(cases[0])) >= 0.95


def test_concurrent_uploads_each_get_their_own_result(client, cases):
    from concurrent.futures import ThreadPoolExecutor

    uploads = [Path(c["image"]) for c in cases] * 3
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda p: post(client, p.name, p.read_bytes()), uploads))
    assert [r.status_code for r in responses] == [200] * len(uploads)
    for path, response in zip(uploads, responses, strict=True):
        result = response.json()
        mask = png_of(client.get(result["links"]["mask"]).content) > 127
        case = next(c for c in cases if Path(c["image"]) == path)
        assert dice_where_decided(mask, reference(case)) >= 0.95, path.name
    assert len({r.json()["id"] for r in responses}) == len(uploads)


def test_jpeg_upload_is_recognised_by_content(client, cases):
    buf = io.BytesIO()
    Image.open(cases[1]["image"]).save(buf, format="JPEG", quality=90)
    response = post(client, "no-suffix", buf.getvalue())
    assert response.status_code == 200, response.text
    result = response.json()
    mask = png_of(client.get(result["links"]["mask"]).content) > 127
    assert result["input_format"] == "JPEG"
    assert dice_where_decided(mask, reference(cases[1])) >= 0.95


def test_dicom_upload_gives_mm2_and_a_seg_of_the_source(client, dicom_upload, shipped_model):
    import highdicom as hd

    from pipeline.inference.outputs import seg_uids

    data = dicom_upload["path"].read_bytes()
    response = post(client, dicom_upload["path"].name, data, "application/dicom")
    assert response.status_code == 200, response.text
    result = response.json()
    areas, source = result["areas"], dicom_upload["dataset"]
    assert result["input_format"] == "DICOM" and result["pixel_spacing_mm"] == [0.35, 0.35]
    assert areas["total_mm2"] == pytest.approx(areas["total_px"] * 0.35**2, abs=0.01)
    mask = png_of(client.get(result["links"]["mask"]).content) > 127
    assert dice_where_decided(mask, reference(dicom_upload["case"])) >= 0.95
    seg_response = client.get(result["links"]["seg"])
    assert seg_response.headers["content-type"] == "application/dicom"
    assert "attachment" in seg_response.headers["content-disposition"]
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(seg_response.content)))
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert seg.PatientName == PATIENT and seg.StudyInstanceUID == source.StudyInstanceUID
    checksum = shipped_model.identity.digest
    expected = seg_uids(source.SeriesInstanceUID, source.SOPInstanceUID, checksum)
    assert seg.SOPInstanceUID == expected["sop_instance_uid"]  # the one `lungseg segment` gives
    labels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=True)[0]
    assert np.array_equal(labels > 0, mask)


def test_nothing_identifying_is_logged(client, dicom_upload, caplog):
    for name, level in LOG_LEVELS.items():  # as `lungseg serve` sets them
        caplog.set_level(level, logger=name or None)
    response = post(client, dicom_upload["path"].name, dicom_upload["path"].read_bytes())
    post(client, "Doe_Jane_notes.txt", b"Jane Doe, born 1970")
    assert response.status_code == 200
    assert "segmented a DICOM upload" in caplog.text and "refused an upload: 415" in caplog.text
    for secret in ("Doe", "Jane", "PID-4711", dicom_upload["dataset"].SOPInstanceUID):
        assert secret not in caplog.text


@pytest.mark.parametrize(
    "name, status, words",
    [
        ("junk/notes.txt", 415, "not an image the viewer accepts"),
        ("junk/empty.dcm", 415, "file is empty"),
        ("junk/truncated.dcm", 422, "cannot be decoded"),
        ("junk/lateral.dcm", 422, "lateral view"),
        ("junk/sr.dcm", 422, "unsupported DICOM"),
    ],
)
def test_bad_uploads_get_a_4xx_naming_the_file_and_reason(
    client, radiograph_folder, temp_root, name, status, words
):
    path = radiograph_folder["root"] / name
    response = post(client, path.name, path.read_bytes())
    assert response.status_code == status
    detail = response.json()["detail"]
    assert detail.startswith(path.name + ": ") and words in detail
    assert list(temp_root.iterdir()) == []


def test_other_image_types_are_refused_by_content(client, cases):
    buf = io.BytesIO()
    Image.open(cases[0]["image"]).save(buf, format="TIFF")
    response = post(client, "scan.png", buf.getvalue(), "image/png")  # the name lies
    assert response.status_code == 415
    assert response.json()["detail"] == (
        "scan.png: the content is TIFF; the viewer accepts DICOM, PNG, JPEG"
    )


def test_a_request_without_a_file_is_a_422_naming_the_field(client):
    response = client.post("/api/segment", files={"image": ("a.png", b"x")})
    assert response.status_code == 422
    assert "file" in response.json()["detail"]


def test_oversize_uploads_are_refused(shipped_model, cases, temp_root):
    png = Path(cases[0]["image"]).read_bytes()
    limit = len(png) - 1
    client = TestClient(create_app(shipped_model, max_upload_bytes=limit, temp_dir=str(temp_root)))
    message = f"the upload is larger than the limit of {limit / 2**20:.3g} MB"
    response = post(client, "a.png", png)  # just over: the file itself is measured
    assert response.status_code == 413 and response.json()["detail"] == message
    response = post(client, "a.png", png * 3)  # refused from its Content-Length, unread
    assert response.status_code == 413 and response.json()["detail"] == message

    def chunks():  # no Content-Length: stopped while streaming
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        yield from (png for _ in range(3))
        yield b"\r\n--b--\r\n"

    headers = {"content-type": "multipart/form-data; boundary=b"}
    response = client.post("/api/segment", content=chunks(), headers=headers)
    assert response.status_code == 413 and response.json()["detail"] == message
    small = io.BytesIO()
    Image.open(cases[0]["image"]).save(small, format="JPEG", quality=50)
    assert post(client, "small.jpg", small.getvalue()).status_code == 200
    assert list(temp_root.iterdir()) == []


def test_results_expire_and_unknown_files_are_404(shipped_model, cases):
    now = [0.0]
    store = ResultStore(max_items=1, ttl_seconds=60, clock=lambda: now[0])
    client = TestClient(create_app(shipped_model, store=store))
    png = Path(cases[0]["image"]).read_bytes()
    first = post(client, "a.png", png).json()
    assert client.get(first["links"]["mask"]).status_code == 200
    assert client.get(f"/api/results/{first['id']}/seg.dcm").status_code == 404  # PNG input
    second = post(client, "b.png", png).json()
    assert client.get(first["links"]["mask"]).status_code == 404  # evicted: one kept
    now[0] = 61.0
    response = client.get(second["links"]["mask"])
    assert response.status_code == 404 and "limited time" in response.json()["detail"]
    response = client.get(f"/api/results/{second['id']}/secrets.txt")
    assert response.status_code == 422 and "mask.png" in response.json()["detail"]


def test_health_openapi_and_page(client, shipped_model):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["max_upload_bytes"] == 64 * 2**20
    assert health["model"]["checkpoint_sha256"] == shipped_model.identity.checkpoint_sha256
    assert health["model"]["digest"] == shipped_model.identity.digest
    schema = client.get("/openapi.json").json()
    post_op = schema["paths"]["/api/segment"]["post"]
    assert "multipart/form-data" in post_op["requestBody"]["content"]
    assert {"200", "413", "415", "422"} <= set(post_op["responses"])
    assert "/healthz" in schema["paths"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for marker in ('<label for="file"', 'id="overlay-toggle"', 'id="opacity"', 'role="alert"'):
        assert marker in page.text
    assert 'fetch("/api/segment"' in client.get("/static/app.js").text


@pytest.mark.parametrize("option", ["--max-upload-mb", "--parallel", "--keep-results"])
def test_serve_rejects_bad_limits_as_a_usage_error(capsys, monkeypatch, option):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server was started"))
    assert main(["serve", option, "0"]) == EXIT_USAGE
    assert option in capsys.readouterr().err


def test_result_store_validates_its_bounds():
    with pytest.raises(ValueError, match="max_items must be >= 1"):
        ResultStore(max_items=0)
