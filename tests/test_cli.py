"""The lungseg command, driven through its entry point with exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from pipeline.io.convert import DicomVariant


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_help_does_not_import_heavy_libraries():
    heavy = "('torch', 'monai', 'pydicom', 'SimpleITK')"
    code = f"import sys, pipeline.cli; sys.exit(int(any(m in sys.modules for m in {heavy})))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_console_script_answers_help():
    exe = Path(sys.executable).with_name("lungseg")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "dicomize" in out.stdout and "preview" in out.stdout


def test_every_command_and_subcommand_answers_help():
    import argparse

    from pipeline.cli import build_parser

    def parsers(parser: argparse.ArgumentParser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    seen = [p.prog for p in parsers(build_parser())]
    assert "lungseg tb evaluate" in seen and len(seen) > 15
    for parser in parsers(build_parser()):
        assert parser.format_help()  # a stray "%" in a help string raises here


def test_dicomize_then_preview_then_info(tmp_path, data_dir, capsys):
    dicom = tmp_path / "dicom"
    assert (
        main(
            [
                "dicomize",
                "--data",
                str(data_dir),
                "--count",
                "4",
                "--pixel-spacing",
                "0.8",
                "-o",
                str(dicom),
            ]
        )
        == EXIT_OK
    )
    files = [dicom / v.value for v in list(DicomVariant)[:4]]
    assert [len(list(f.glob("*.dcm"))) for f in files] == [1, 1, 1, 1]
    files = [next(f.glob("*.dcm")) for f in files]
    before = _tree(dicom)

    assert main(["preview", str(dicom), "-o", str(tmp_path / "prev"), "--size", "256"]) == EXIT_OK
    assert _tree(dicom) == before  # nothing written into the input folder
    previews = sorted((tmp_path / "prev").rglob("*.png"))
    assert len(previews) == 4
    with Image.open(previews[0]) as img:
        assert img.size == (3 * 256 + 2 * 4, 256)  # three panels and two gaps

    capsys.readouterr()
    assert main(["info", str(files[2])]) == EXIT_OK  # the MONOCHROME1 variant
    row = json.loads(capsys.readouterr().out)
    assert row["status"] == "ok" and row["photometric_interpretation"] == "MONOCHROME1"
    assert (
        row["pixel_spacing"] == [0.8, 0.8] and row["pixel_spacing_source"] == "ImagerPixelSpacing"
    )


def test_bad_files_are_reported_and_the_run_goes_on(tmp_path, data_dir, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "notes.txt").write_text("not an image")
    (src / "empty.dcm").write_bytes(b"")
    Image.open(data_dir / "images" / "CHNCXR_0001_0.png").save(src / "good.png")
    code = main(["preview", str(src), "-o", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == EXIT_FAILED
    assert "failed  " + str(src / "empty.dcm") + ": file is empty (0 bytes)" in out
    assert "1 ok, 0 skipped, 2 failed" in out
    assert (tmp_path / "out" / "good.png").is_file()


def test_skipped_inputs_do_not_fail_the_run(tmp_path, pixels, capsys):
    from pipeline.io.convert import build_dicom, write_dicom

    ds = build_dicom(pixels)
    ds.ViewPosition = "LL"
    write_dicom(ds, tmp_path / "lat.dcm")
    assert main(["info", str(tmp_path / "lat.dcm")]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["status"] == "skipped"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["preview", "does-not-exist", "-o", "x"], "input 'does-not-exist' does not exist"),
        (
            ["dicomize", "--variant", "bogus", "-o", "x"],
            "DicomVariant 'bogus' is not one of: mono2-8bit",
        ),
        (["dicomize", "--data", "/nonexistent", "-o", "x"], "no images/ folder"),
    ],
)
def test_usage_errors_exit_2_with_a_message(tmp_path, argv, message, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as err:
        main(["info", "--voi", "gamma", "x"])
    assert err.value.code == EXIT_USAGE
    assert "invalid choice: 'gamma'" in capsys.readouterr().err


def test_dicomize_explicit_images(tmp_path, pixels):
    png = tmp_path / "a.png"
    Image.fromarray(pixels).save(png)
    assert (
        main(["dicomize", str(png), "--variant", "jpeg-ls", "-o", str(tmp_path / "d")]) == EXIT_OK
    )
    from pipeline.io import read_cxr

    image, meta = read_cxr(tmp_path / "d" / "jpeg-ls" / "a.dcm")
    assert meta["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.80"
    np.testing.assert_allclose(image, pixels / 255, atol=1e-6)


def test_prepare_data_from_the_nlm_layout(tmp_path, data_dir, case_pixels, case_masks):
    # Lay out a miniature NLM download from the shared images: Montgomery with separate
    # left/right masks, Shenzhen with Stirenko's "_mask" names in their own folder.
    mont, shen, shen_masks = (
        tmp_path / "MontgomerySet",
        tmp_path / "ChinaSet_AllFiles",
        tmp_path / "sm",
    )
    for d in (
        mont / "CXR_png",
        mont / "ManualMask" / "leftMask",
        mont / "ManualMask" / "rightMask",
    ):
        d.mkdir(parents=True)
    (shen / "CXR_png").mkdir(parents=True)
    shen_masks.mkdir()
    name = "MCUCXR_0104_1.png"
    Image.fromarray(case_pixels[name]).save(mont / "CXR_png" / name)
    full = case_masks[name]
    left, right = full.copy(), full.copy()
    left[:, 256:], right[:, :256] = False, False
    Image.fromarray(left.astype(np.uint8) * 255).save(mont / "ManualMask" / "leftMask" / name)
    Image.fromarray(right.astype(np.uint8) * 255).save(mont / "ManualMask" / "rightMask" / name)
    Image.fromarray(case_pixels["CHNCXR_0001_0.png"]).save(shen / "CXR_png" / "CHNCXR_0001_0.png")
    Image.fromarray(case_masks["CHNCXR_0001_0.png"].astype(np.uint8) * 255).save(
        shen_masks / "CHNCXR_0001_0_mask.png"
    )
    Image.fromarray(case_pixels["CHNCXR_0327_1.png"]).save(
        shen / "CXR_png" / "CHNCXR_0327_1.png"
    )  # no mask

    out = tmp_path / "collection"
    argv = ["prepare-data", "--montgomery", str(mont), "--shenzhen", str(shen)]
    assert (
        main([*argv, "--shenzhen-masks", str(shen_masks), "--size", "256", "-o", str(out)])
        == EXIT_OK
    )

    from pipeline.io.datasets import list_cases

    cases = list_cases(out)
    assert [(c.name, c.fields["source"], c.fields["tuberculosis"]) for c in cases] == [
        ("MCUCXR_0104_1.png", "montgomery", "1"),
        ("CHNCXR_0001_0.png", "shenzhen", "0"),
    ]
    with Image.open(cases[0].mask) as m:
        merged = np.asarray(m) > 127
    assert merged.shape == (256, 256)
    expected = full[::2, ::2]
    assert 2 * (merged & expected).sum() / (merged.sum() + expected.sum()) > 0.97  # left + right


def test_train_maps_options_to_bundle_config_ids(monkeypatch, tmp_path):
    import pipeline.training.run as run

    seen = {}

    def fake_train(overrides, **kwargs):
        seen.update(overrides)
        return {"epochs": 1, "best_metric": 0.5, "best_epoch": 1}

    monkeypatch.setattr(run, "train", fake_train)
    argv = ["train", "--clahe", "--image-size", "128", "--no-mlflow", "-o", str(tmp_path)]
    assert main(argv) == EXIT_OK
    assert seen["clahe"] is True and seen["image_size"] == 128 and "tophat" not in seen
    assert seen["bundle_root"] == str(tmp_path.resolve())


def test_an_error_deep_in_a_library_is_a_failure_with_traceback_not_a_usage_error(
    tmp_path, data_dir, monkeypatch, capsys
):
    import shutil

    import monai.transforms

    def broken(self, data, *args, **kwargs):
        raise ValueError("something inside MONAI went wrong")

    monkeypatch.setattr(monai.transforms.Compose, "__call__", broken)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(data_dir / "images" / "MCUCXR_0001_0.png", inputs)
    argv = ["protocol", "stress", "-o", str(tmp_path / "out"), "--max-eval-cases", "1"]
    assert main(argv) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" in err and "something inside MONAI went wrong" in err
    # lungseg's own check of a value stays a usage error
    assert main(["segment", str(inputs), "-o", str(tmp_path / "o"), "--shard", "3/2"]) == EXIT_USAGE
