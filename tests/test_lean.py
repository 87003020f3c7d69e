"""MONAI imported for inference without the extras it does not use: they stay out, it works."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.lean import NOT_FOR_INFERENCE, WAIT_VARIABLES, let_idle_threads_sleep
from tests.conftest import dicom_folder


def python(
    script: str, *args: str, timeout: int = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter (nothing imported yet); its output as text."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
        env=env,
    )


SCRIPT = """
import sys

from pipeline.lean import NOT_FOR_INFERENCE, import_monai_for_inference
assert import_monai_for_inference() is True
assert import_monai_for_inference() is False  # already imported: nothing to hide
print(sorted(m for m in NOT_FOR_INFERENCE if m in sys.modules))
import pkgutil, monai.utils.module as mod
print("monai.apps.pathology" in sys.modules, mod.walk_packages is pkgutil.walk_packages)
from pipeline.inference.predictor import Predictor
pred = Predictor(device="cpu").predict_single_npy_array(__import__("numpy").load(sys.argv[1]))
print(int(pred.mask.sum()), pred.measures.flags)
import ignite, mlflow  # after MONAI, they import as usual
print("later imports ok")
"""


def test_the_extras_stay_out_and_the_predictor_still_segments(tmp_path, pixels, lung_mask):
    import numpy as np

    np.save(tmp_path / "x.npy", pixels)
    out = python(SCRIPT, str(tmp_path / "x.npy")).stdout.splitlines()
    assert out[0] == "[]" and out[-1] == "later imports ok"
    assert out[1] == "False True"  # MONAI's walk over all its modules skipped, then restored
    area, flags = out[2].split(" ", 1)
    assert abs(int(area) - int(lung_mask.sum())) < 0.1 * lung_mask.sum() and flags == "[]"


def test_nothing_is_hidden_once_monai_is_imported():
    import monai  # noqa: F401  (this test process has it)

    from pipeline.lean import _Hidden, import_monai_for_inference

    assert import_monai_for_inference() is False
    assert not any(isinstance(f, _Hidden) for f in sys.meta_path)


def test_lungseg_segment_runs_without_the_extras(tmp_path, pixels):
    dicom_folder(tmp_path / "in", pixels)
    script = (
        "import sys; from pipeline.cli import main; "
        f"code = main(['segment', {str(tmp_path / 'in')!r}, '-o', {str(tmp_path / 'out')!r}, "
        "'--no-progress']); "
        f"print(code, sorted(m for m in {NOT_FOR_INFERENCE!r} if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"  # OpenMP prints the settings it read as torch loaded
    done = python(script, timeout=300, env=env)
    assert done.stdout.splitlines()[-1] == "0 []"
    assert (tmp_path / "out" / "masks" / "0.png").is_file()
    if "OPENMP DISPLAY ENVIRONMENT" not in done.stderr:
        pytest.skip("torch's OpenMP runtime does not display its settings (not libgomp)")
    assert "GOMP_SPINCOUNT = '0'" in done.stderr  # threads out of work sleep at once


def test_idle_threads_sleep_unless_the_user_chose(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as before torch is imported
    env = {"PATH": "/usr/bin"}
    assert let_idle_threads_sleep(env) is True and env["OMP_WAIT_POLICY"] == "PASSIVE"
    for chosen in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "10000"}):
        assert let_idle_threads_sleep(dict(chosen)) is False
    monkeypatch.undo()  # torch imported: too late, the runtime has read its settings
    env = {}
    assert let_idle_threads_sleep(env) is False and env == {}


def test_nifti_in_and_out_work_with_monai_imported_lean(tmp_path, pixels):
    """nibabel is hidden from MONAI's import only: lungseg's own NIfTI reader and writer work."""
    import nibabel as nib
    import numpy as np

    (tmp_path / "in").mkdir()
    nib.save(
        nib.Nifti1Image(np.ascontiguousarray(pixels.T), np.eye(4)), tmp_path / "in" / "a.nii.gz"
    )
    script = (
        "from pipeline.cli import main; "
        f"print(main(['segment', {str(tmp_path / 'in')!r}, '-o', {str(tmp_path / 'out')!r}, "
        "'--formats', 'mask,nifti', '--no-progress']))"
    )
    out = python(script, timeout=300).stdout.splitlines()
    assert out[-1] == "0"
    written = nib.load(tmp_path / "out" / "nifti" / "a.nii.gz").get_fdata()
    assert written.shape[:2] == pixels.T.shape and written.max() > 0


DEFERRED_SCRIPT = """
import sys

from pipeline.lean import import_monai_for_inference
assert import_monai_for_inference() is True
print("skimage.morphology.binary" in sys.modules, "skimage.measure._label" in sys.modules)
import torch
from monai.transforms import KeepLargestConnectedComponent  # uses skimage.measure on the CPU
x = torch.zeros(1, 9, 9)
x[0, :2, :2] = 1
x[0, 4:, 4:] = 1
print(int(KeepLargestConnectedComponent(applied_labels=[1])(x).sum()))
from skimage import morphology
print(int(morphology.disk(1).sum()), type(sys.modules["skimage.morphology"]).__name__)
"""


def test_scikit_image_loads_at_first_use_and_monai_still_uses_it():
    out = python(DEFERRED_SCRIPT).stdout.splitlines()
    assert out[0] == "False False"  # not imported while MONAI loaded
    assert out[1] == "25"  # MONAI's component filter ran with the real skimage.measure
    assert out[2] == "5 module"  # the real module replaced the stand-in


COLLECTOR = """
import gc, sys
from pipeline.cli import main
from pipeline.inference.segment import Segmenter
states, real_pool = [], Segmenter._pool
def pool(self):
    states.append(gc.isenabled())  # during start-up
    made = real_pool(self)
    states.append(gc.isenabled())  # once the workers are started
    return made
Segmenter._pool = pool
code = main(['segment', sys.argv[1], '-o', sys.argv[2], '--no-progress', '--formats', 'mask'])
print(code, states[:2], gc.get_freeze_count() > 0, gc.isenabled())
bad = main(['segment', sys.argv[1], '-o', sys.argv[2], '--shard', '0/4'])
print(bad, gc.isenabled())
"""


def test_the_collector_sleeps_through_start_up_and_wakes_frozen_for_the_workers(tmp_path, pixels):
    dicom_folder(tmp_path / "in", pixels)
    args = [str(tmp_path / "in"), str(tmp_path / "out")]
    out = python(COLLECTOR, *args, timeout=300).stdout.splitlines()
    assert out[-2] == "0 [False, True] True True"  # paused, then on with start-up frozen
    assert out[-1] == "2 True"  # a command that ends early leaves it on too


TABLES = """
import gc, sys
from pipeline.cli import main
from pipeline.inference.segment import Segmenter
seen, real_pool = {}, Segmenter._pool
def pool(self):
    made = real_pool(self)
    from highdicom._standard_utils import get_module_attribute_map
    table = get_module_attribute_map()
    seen["frozen"] = not any(o is table for o in gc.get_objects())  # frozen: not listed
    return made
Segmenter._pool = pool
code = main(['segment', sys.argv[1], '-o', sys.argv[2], '--no-progress', '--workers', '1'])
print(code, seen)
"""


def test_highdicoms_tables_are_parsed_before_the_collector_wakes_and_frozen_with_it(
    tmp_path, pixels
):
    """Parsed with the collector on, 22 MB of JSON took ~0.31 s instead of ~0.19 s, and its
    objects stayed where every later collection (in each worker too) walked them again."""
    dicom_folder(tmp_path / "in", pixels)
    args = [str(tmp_path / "in"), str(tmp_path / "out")]
    out = python(TABLES, *args, timeout=300).stdout.splitlines()
    assert out[-1] == "0 {'frozen': True}"
