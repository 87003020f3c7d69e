"""The Quickstart's ``make demo``: its batch command as the Makefile writes it."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from pipeline.cli import EXIT_OK, main
from pipeline.io.datasets import REPO_ROOT
from tests.conftest import dicom_folder

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def test_make_demo_reruns_after_the_model_changed(tmp_path, pixels):
    """``make demo`` is run again after an upgrade; its output folder then holds a run of
    another model or config, which ``lungseg segment`` refuses without --overwrite (exit 2:
    the Quickstart's first command failed on every machine that had run an older demo)."""
    dicom_folder(tmp_path / "dicom", pixels)
    argv = ["segment", str(tmp_path / "dicom"), "-o", str(tmp_path / "segmented")]
    assert main([*argv, "--no-progress", "--view-check", "off"]) == EXIT_OK  # another config
    dry = subprocess.run(
        ["make", "-n", "demo", f"DEMO_OUT={tmp_path}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    (line,) = [x for x in dry.stdout.splitlines() if "lungseg segment" in x]
    command = shlex.split(line)
    assert main(command[1:]) == EXIT_OK  # the demo's own arguments, after the program name
