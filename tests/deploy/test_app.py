"""The MONAI Deploy application: the SDK's loader and selector, lungseg's SEG.

Runs ``python -m pipeline.deploy -i DIR -o OUT`` in the environment that has the SDK
(``make deploy-env`` builds ``.venv-deploy``; ``LUNGSEG_DEPLOY_PYTHON`` overrides) — the
Holoscan graph on the CPU — on DICOM built at test time, and checks that each SEG is the
one ``lungseg segment`` writes for the same file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipeline.io.convert import DicomVariant, build_dicom, write_dicom
from pipeline.training.data import load_split
from tests.conftest import lateral_view, load_png, sr_object

ROOT = Path(__file__).resolve().parents[2]
RADIOGRAPHS = {
    "cr-mono1.dcm": DicomVariant.MONO1_WINDOW,
    "dx-inverse.dcm": DicomVariant.DX_MONO1_INVERSE,
    "cr-j2k.dcm": DicomVariant.JPEG2000,
    "cr-voilut.dcm": DicomVariant.VOI_LUT,
}


@pytest.fixture(scope="module")
def deploy_python() -> str:
    """The Python of the environment with monai-deploy-app-sdk (fails in CI when absent)."""
    python = os.environ.get("LUNGSEG_DEPLOY_PYTHON") or str(ROOT / ".venv-deploy/bin/python")
    if not Path(python).exists():
        message = f"no MONAI Deploy environment at {python}; run make deploy-env"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory, data_dir) -> Path:
    """Four frontal radiographs (CR and DX, four encodings), a lateral and an SR object."""
    folder = tmp_path_factory.mktemp("deploy-in")
    cases = load_split(data_dir, "test", len(RADIOGRAPHS) + 1)
    for (name, variant), case in zip(RADIOGRAPHS.items(), cases, strict=False):
        pixels = load_png(Path(case["image"]))
        write_dicom(build_dicom(pixels, variant, name=name, spacing_mm=0.4), folder / name)
    write_dicom(lateral_view(load_png(Path(cases[-1]["image"]))), folder / "lateral.dcm")
    write_dicom(sr_object(), folder / "sr.dcm")
    return folder


@pytest.mark.slow
def test_deploy_app_writes_the_seg_lungseg_segment_writes(deploy_python, study_folder, tmp_path):
    from pipeline.inference.segment import segment

    segment([study_folder], tmp_path / "segment", progress=False, workers=0)
    out = tmp_path / "deploy"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [deploy_python, "-m", "pipeline.deploy", "-i", str(study_folder), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "lateral.dcm: skipped: lateral view" in run.stdout + run.stderr
    written = {pydicom.dcmread(p).SOPInstanceUID: p for p in out.glob("*.dcm")}
    assert len(written) == len(RADIOGRAPHS)  # the lateral and the SR are not segmented
    for name in RADIOGRAPHS:
        source = pydicom.dcmread(study_folder / name, stop_before_pixels=True)
        ours = pydicom.dcmread(tmp_path / "segment" / "seg" / name)
        theirs = pydicom.dcmread(out / f"{source.SOPInstanceUID}.dcm")
        assert theirs.SOPInstanceUID == ours.SOPInstanceUID, name
        np.testing.assert_array_equal(theirs.pixel_array, ours.pixel_array)
        ref = theirs.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert [s.SegmentLabel for s in theirs.SegmentSequence] == ["Right lung", "Left lung"]


FAKE_APP = """
import os, runpy, sys, types
from pathlib import Path
import pipeline.cpus as cpus
cpus.CGROUP_ROOT, cpus.PROC_CGROUP = Path(sys.argv[1]), Path(sys.argv[2])
cpus.affinity_cpus = lambda: 4
app = types.ModuleType("pipeline.deploy.app")
class LungSegApp:
    def run(self):
        print(os.environ.get("OMP_NUM_THREADS"), "torch" in sys.modules)
app.LungSegApp = LungSegApp
sys.modules["pipeline.deploy.app"] = app
runpy.run_module("pipeline.deploy", run_name="__main__")
"""


def test_the_app_fits_the_network_threads_to_a_cpu_quota_before_torch_loads(one_cpu_quota):
    import pipeline.cpus as cpus

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    args = [str(cpus.CGROUP_ROOT), str(cpus.PROC_CGROUP)]
    out = subprocess.run(
        [sys.executable, "-c", FAKE_APP, *args], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.split() == ["1", "False"]  # set, and torch not loaded yet
