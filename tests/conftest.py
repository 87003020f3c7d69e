"""Shared fixtures: the real Montgomery/Shenzhen images, and DICOM files built from them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.io.datasets import default_data_dir
from pipeline.io.highdicom_tables import CACHE_ENV

#: The tests' cache folder (the index of highdicom's table), not the user's; child processes
#: inherit it.
os.environ.setdefault(CACHE_ENV, str(Path(tempfile.gettempdir()) / f"lungseg-tests-{os.getuid()}"))

#: Two cases from each source; MCUCXR_0001_0 has the black band Montgomery images carry.
CASES = ("MCUCXR_0001_0.png", "MCUCXR_0104_1.png", "CHNCXR_0001_0.png", "CHNCXR_0327_1.png")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data set; tests that need it fail in CI and skip elsewhere when absent."""
    path = default_data_dir()
    if not (path / "images").is_dir():
        message = f"shared data not found at {path}; set LUNGSEG_DATA"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def load_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks."""
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def dice_where_decided(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice outside the region behind the heart a visible-convention reference leaves out.

    The shipped model outputs the anatomical lung field (the left lung behind the heart
    included); most shared references stop at the heart's border
    (:mod:`pipeline.evaluation.lung_field`).
    """
    from pipeline.evaluation.lung_field import decided_overlap

    return decided_overlap(pred, truth, anatomical_reference=False)["dice"]


def dicom_folder(folder: Path, pixels: np.ndarray, count: int = 1, variant: str = "mono2-16bit"):
    """``folder`` holding ``count`` DICOM copies of ``pixels`` named ``0.dcm``, ``1.dcm``...

    Returns:
        The folder.
    """
    from pipeline.io.convert import build_dicom, write_dicom

    for i in range(count):
        write_dicom(build_dicom(pixels, variant), folder / f"{i}.dcm")
    return folder


def with_raw_value(ds: Any, keyword: str, text: str, encoding: str = "utf-8") -> Any:
    """``ds`` with ``keyword`` holding ``text`` as the file's bytes (pydicom would refuse it)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag, value = Tag(tag_for_keyword(keyword)), text.encode(encoding)
    value += b" " * (len(value) % 2)
    ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
    return ds


def write_raw_dataset(ds: Any, path: Path, implicit: bool = True, little: bool = True) -> Path:
    """``ds`` written as old archives write it: no preamble, no file meta, no transfer syntax.

    Native 16-bit pixels are swapped into the dataset's byte order.
    """
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset

    del ds.file_meta
    path.parent.mkdir(parents=True, exist_ok=True)
    if not little:  # native pixels in the dataset's byte order
        ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
    with open(path, "wb") as fh:
        fp = DicomFileLike(fh)
        fp.is_implicit_VR, fp.is_little_endian = implicit, little
        write_dataset(fp, ds)
    return path


def child_pids(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    out = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines())
        except (OSError, ValueError):
            continue
        if fields.get("PPid", "").strip() == str(pid):
            out.add(int(status.parent.name))
    return out


def is_running(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting to be reaped."""
    try:
        state = next(
            ln
            for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
            if ln.startswith("State")
        )
    except (OSError, StopIteration):
        return False
    return "Z" not in state.split(":", 1)[1].split()[0]


def dcmtk(tool: str) -> str | None:
    """The path of dcmtk's ``tool`` on PATH, or None.

    pynetdicom installs Python apps of the same names (storescu, storescp, ...) into the
    virtual environment, which shadow dcmtk's once it is activated; those are skipped (a
    dcmtk tool is a compiled program, not a script).
    """
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / tool
        if candidate.is_file() and os.access(candidate, os.X_OK):
            with candidate.open("rb") as f:
                if f.read(2) != b"#!":
                    return str(candidate)
    return None


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    """The command running ``python -m ARGS`` under torchrun with ``nproc`` local processes."""
    import sys

    head = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    return [*head, "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", *args]


@pytest.fixture()
def one_cpu_quota(tmp_path, monkeypatch) -> None:
    """This process, as far as :mod:`pipeline.cpus` can tell, in a cgroup v2 limited to 1 CPU
    of the 4 in its affinity mask (a container run with ``--cpus 1``)."""
    import pipeline.cpus as cpus

    (tmp_path / "cg" / "job").mkdir(parents=True)
    (tmp_path / "cg" / "job" / "cpu.max").write_text("100000 100000\n")
    (tmp_path / "proc-cgroup").write_text("0::/job\n")
    monkeypatch.setattr(cpus, "CGROUP_ROOT", tmp_path / "cg")
    monkeypatch.setattr(cpus, "PROC_CGROUP", tmp_path / "proc-cgroup")
    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 4)


@pytest.fixture(scope="session")
def shipped_model():
    """The shipped bundle's model on the CPU, loaded once per test session."""
    from pipeline.inference.predictor import Predictor

    return Predictor(device="cpu")


@pytest.fixture(scope="session")
def case_pixels(data_dir: Path) -> dict[str, np.ndarray]:
    """uint8 pixels of the sample cases, by file name."""
    return {name: load_png(data_dir / "images" / name) for name in CASES}


@pytest.fixture(scope="session")
def case_masks(data_dir: Path) -> dict[str, np.ndarray]:
    """Boolean lung masks of the sample cases (lung = value > 127, as the data README says)."""
    return {name: load_png(data_dir / "masks" / name) > 127 for name in CASES}


@pytest.fixture(scope="session")
def pixels(case_pixels: dict[str, np.ndarray]) -> np.ndarray:
    """One real radiograph, cropped to 512 x 400 so a transpose cannot go unnoticed."""
    return np.ascontiguousarray(case_pixels["MCUCXR_0104_1.png"][:, 50:450])


@pytest.fixture(scope="session")
def lung_mask(case_masks: dict[str, np.ndarray]) -> np.ndarray:
    """The lung mask matching :func:`pixels`."""
    return np.ascontiguousarray(case_masks["MCUCXR_0104_1.png"][:, 50:450])


def lateral_view(pixels: np.ndarray):
    """A CR dataset of ``pixels`` whose View Position says lateral (lungseg skips it)."""
    from pipeline.io.convert import build_dicom

    lateral = build_dicom(pixels, name="lateral")
    lateral.ViewPosition = "LL"
    return lateral


def sr_object():
    """An SR dataset without pixels (not a radiograph: lungseg skips it)."""
    from pipeline.io.convert import build_dicom

    sr = build_dicom(np.zeros((4, 4), np.uint8), name="sr")
    for keyword in [e.keyword for e in sr if e.tag.group == 0x0028] + ["PixelData"]:
        delattr(sr, keyword)
    sr.SOPClassUID, sr.Modality = "1.2.840.10008.5.1.4.1.1.88.33", "SR"
    return sr


@pytest.fixture(scope="session")
def radiograph_folder(tmp_path_factory, data_dir) -> dict:
    """A folder as users have them: held-out cases as PNG and as DICOM in several encodings
    in nested sub-folders, plus junk (text, truncated, zero-byte, SR object, lateral view).

    Returns:
        ``{"root": Path, "cases": {relative path: case name}, "expected": {relative path:
        status}}``; DICOM files carry ImagerPixelSpacing 0.35 mm, except ``rle.dcm``.
    """
    from pipeline.io.convert import DicomVariant, build_dicom, write_dicom
    from pipeline.training.data import load_split

    root = tmp_path_factory.mktemp("radiographs")
    test = load_split(data_dir, "test", 7)
    names = [Path(c["image"]).name for c in test]
    cases: dict[str, str] = {}
    for name in names[:2]:
        (root / "png").mkdir(exist_ok=True)
        (root / "png" / name).write_bytes((data_dir / "images" / name).read_bytes())
        cases[f"png/{name}"] = name
    dicoms = {
        "dicom/a/mono1.dcm": (DicomVariant.MONO1_WINDOW, 0.35),
        "dicom/a/b/voilut.dcm": (DicomVariant.VOI_LUT, 0.35),
        "dicom/j2k.dcm": (DicomVariant.JPEG2000, 0.35),
        "dicom/rle.dcm": (DicomVariant.RLE, None),
        "dicom/noextension": (DicomVariant.MONO2_16BIT, 0.35),
    }
    for (rel, (variant, spacing)), name in zip(dicoms.items(), names[2:], strict=True):
        pixels = load_png(data_dir / "images" / name)
        write_dicom(build_dicom(pixels, variant, name=name, spacing_mm=spacing), root / rel)
        cases[rel] = name
    junk = root / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("scanned on Monday")
    (junk / "empty.dcm").write_bytes(b"")
    full = (root / "dicom/rle.dcm").read_bytes()
    (junk / "truncated.dcm").write_bytes(full[: len(full) // 2])
    write_dicom(lateral_view(load_png(data_dir / "images" / names[0])), junk / "lateral.dcm")
    write_dicom(sr_object(), junk / "sr.dcm")
    expected = {rel: "ok" for rel in cases}
    expected.update(
        {
            "junk/notes.txt": "skipped",
            "junk/lateral.dcm": "skipped",
            "junk/sr.dcm": "skipped",
            "junk/empty.dcm": "failed",
            "junk/truncated.dcm": "failed",
        }
    )
    return {"root": root, "cases": cases, "expected": expected}


ORTHANC = shutil.which("Orthanc")
ORTHANC_DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
needs_orthanc = pytest.mark.skipif(
    not (ORTHANC and ORTHANC_DICOMWEB.exists()) and not os.environ.get("CI"),
    reason="Orthanc not installed (make test-deps)",
)


@pytest.fixture()
def orthanc(tmp_path):
    """A running Orthanc PACS on loopback with a private configuration.

    Yields ``{"aet", "dicom_port", "url", "http"}`` (``url``: the DICOMweb root).
    """
    with running_orthanc(tmp_path) as server:
        yield server


@contextlib.contextmanager
def running_orthanc(folder: Path) -> Iterator[dict[str, Any]]:
    """Orthanc on loopback, its configuration, storage and log under ``folder``, stopped after.

    Yields ``{"aet", "dicom_port", "url", "http"}`` (``url``: the DICOMweb root).
    """
    http, dicom = free_port(), free_port()
    config = {
        "Name": "lungseg-test",
        "StorageDirectory": str(folder / "orthanc" / "storage"),
        "IndexDirectory": str(folder / "orthanc" / "index"),
        "HttpPort": http,
        "DicomPort": dicom,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "Plugins": [str(ORTHANC_DICOMWEB)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/system", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.05)
        else:
            raise RuntimeError("Orthanc did not start")
        assert proc.poll() is None, (folder / "orthanc.log").read_text()[-2000:]
        yield {"aet": "ORTHANC", "dicom_port": dicom, "url": base + "/dicom-web", "http": base}
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
