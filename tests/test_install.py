"""A wheel built from the repository, installed into a fresh venv, runs with the shipped bundles."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.io.datasets import REPO_ROOT
from tests.conftest import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with only the wheel installed; the dependencies come from this environment."""
    work = tmp_path_factory.mktemp("install")
    build = [sys.executable, "-m", "pip", "wheel", str(REPO_ROOT), "--no-deps"]
    build += ["--no-build-isolation", "-q", "-w", str(work / "dist")]
    subprocess.run(build, check=True, cwd=work, timeout=600)
    (wheel,) = (work / "dist").glob("lungseg-*.whl")
    venv = work / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    site = (
        venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    )
    (site / "lungseg-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*pip, str(wheel)], check=True, timeout=600)
    return venv


def test_the_wheel_carries_the_bundles_and_segments(installed, tmp_path, data_dir):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(data_dir / "images" / "MCUCXR_0001_0.png", inputs)
    cmd = [str(installed / "bin" / "lungseg"), "segment", str(inputs), "-o", str(tmp_path / "out")]
    proc = subprocess.run(
        [*cmd, "--formats", "mask", "--workers", "0", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert Path(summary["model"]["bundle"]).is_relative_to(installed / "share" / "lungseg")
    assert (tmp_path / "out" / "masks" / "MCUCXR_0001_0.png").is_file()


def test_the_installed_viewer_serves_the_shipped_model(installed, tmp_path):
    port = free_port()
    cmd = [str(installed / "bin" / "lungseg"), "serve", "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        health = None
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
        assert health is not None, proc.stdout.read().decode()[-3000:] if proc.poll() else ""
        assert health["model"]["name"] == "Lung segmentation in chest X-rays"
    finally:
        proc.terminate()
        proc.wait(30)
