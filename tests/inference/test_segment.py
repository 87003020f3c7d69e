"""``lungseg segment`` on a realistic folder: statuses, outputs, report, resume, shards."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

from pipeline.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from pipeline.enums import View
from pipeline.inference.segment import (
    MAX_AUTO_WORKERS,
    PoolRotation,
    parse_shard,
    plan,
    resolve_workers,
)
from pipeline.inference.view_check import NOTES
from pipeline.networks.fusion import bfloat16_fused
from tests.conftest import (
    child_pids,
    dice,
    dice_where_decided,
    dicom_folder,
    is_running,
    load_png,
    write_raw_dataset,
)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _report(out: Path) -> dict[str, dict]:
    with open(out / "report.csv", newline="") as fh:
        return {row["path"]: row for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def segmented(radiograph_folder, tmp_path_factory):
    """One uninterrupted run over the folder (two workers, batches of 3, and a fresh pool of
    workers every 4 inputs, so the results below also prove that recycling loses nothing)."""
    import pipeline.inference.segment as segment_module

    root = radiograph_folder["root"]
    before = _digest(root)
    out = tmp_path_factory.mktemp("segmented")
    argv = ["segment", str(root), "-o", str(out), "--workers", "2", "--batch-size", "3"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(segment_module, "RECYCLE_EVERY", 2)  # images per worker
        mp.setattr(segment_module, "RECYCLE_PIXELS", 1)  # each image counts fully
        code = main([*argv, "--no-progress", "--formats", "seg,mask,overlay,nifti"])
    return {"out": out, "code": code, "before": before, **radiograph_folder}


def test_statuses_reasons_and_exit_code(segmented):
    report = _report(segmented["out"])
    root = segmented["root"]
    got = {str(Path(p).relative_to(root)): row["status"] for p, row in report.items()}
    assert got == segmented["expected"]
    assert segmented["code"] == EXIT_FAILED  # the truncated and empty files
    reasons = {str(Path(p).relative_to(root)): row["reason"] for p, row in report.items()}
    assert "lateral view (ViewPosition LL)" in reasons["junk/lateral.dcm"]
    assert "Comprehensive SR Storage" in reasons["junk/sr.dcm"]
    assert "empty" in reasons["junk/empty.dcm"]
    assert reasons["junk/notes.txt"] == "not an image file (by its suffix)"
    assert all(row["reason"] == "" for row in report.values() if row["status"] == "ok")


def test_masks_have_the_input_size_and_match_the_reference(segmented, data_dir):
    scores = []
    for rel, name in segmented["cases"].items():
        stem = rel.rsplit(".", 1)[0] if rel.endswith((".png", ".dcm")) else rel
        mask = load_png(segmented["out"] / "masks" / f"{stem}.png")
        truth = load_png(data_dir / "masks" / name) > 127
        assert mask.shape == truth.shape and set(np.unique(mask)) <= {0, 255}
        pred = mask > 127
        scores.append(dice_where_decided(pred, truth))
    assert min(scores) > 0.9 and np.mean(scores) >= 0.95, scores


def test_seg_objects_reference_their_source_and_hold_both_lungs(segmented):
    import highdicom as hd

    out, root = segmented["out"], segmented["root"]
    report = _report(out)
    dicom_rels = [r for r in segmented["cases"] if not r.startswith("png/")]
    assert sorted(
        p.relative_to(out / "seg").as_posix() for p in (out / "seg").rglob("*.dcm")
    ) == sorted((r.rsplit(".", 1)[0] if r.endswith(".dcm") else r) + ".dcm" for r in dicom_rels)
    for rel in dicom_rels:
        source = pydicom.dcmread(root / rel)
        seg = hd.seg.segread(out / "seg" / ((rel[:-4] if rel.endswith(".dcm") else rel) + ".dcm"))
        referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert seg.StudyInstanceUID == source.StudyInstanceUID
        assert seg.SeriesInstanceUID != source.SeriesInstanceUID
        labels = [
            (
                s.SegmentLabel,
                s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
                s.SegmentedPropertyTypeCodeSequence[0]
                .SegmentedPropertyTypeModifierCodeSequence[0]
                .CodeValue,
            )
            for s in seg.SegmentSequence
        ]  # Lung (SCT 39607008) with the side as modifier: Right 24028007, Left 7771000
        assert labels == [
            ("Right lung", "39607008", "24028007"),
            ("Left lung", "39607008", "7771000"),
        ]
        assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName
        pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1, 2])
        row = report[str(root / rel)]
        assert int(pixels[..., 0].sum()) == int(row["right_area_px"])
        assert int(pixels[..., 1].sum()) == int(row["left_area_px"])


def test_report_areas_spacing_and_sides(segmented):
    report = _report(segmented["out"])
    root = segmented["root"]
    j2k = report[str(root / "dicom/j2k.dcm")]
    assert (
        j2k["pixel_spacing_source"] == "ImagerPixelSpacing"
        and j2k["pixel_spacing_mm"] == "0.35\\0.35"
    )
    assert float(j2k["total_area_mm2"]) == pytest.approx(
        int(j2k["total_area_px"]) * 0.35**2, rel=1e-4
    )
    assert report[str(root / "dicom/rle.dcm")]["total_area_mm2"] == ""
    for row in (r for r in report.values() if r["status"] == "ok"):
        right, left = int(row["right_area_px"]), int(row["left_area_px"])
        assert right + left == int(row["total_area_px"]) and 0.6 < right / left < 1.8
        assert row["sop_instance_uid"] or row["path"].endswith(".png")
        assert float(row["mean_confidence"]) > 0.85 and row["qa_flags"] == ""
    lines = (segmented["out"] / "report.jsonl").read_text().splitlines()
    assert len(lines) == len(report) and json.loads(lines[0])["path"] == sorted(report)[0]


def test_overlays_nifti_and_summary(segmented):
    import nibabel as nib

    out = segmented["out"]
    with Image.open(out / "overlays" / "png" / next(iter(segmented["cases"].values()))) as img:
        overlay = np.asarray(img.convert("RGB"))
    assert overlay.ndim == 3 and overlay.shape[2] == 3 and len(np.unique(overlay[..., 0])) > 100
    nifti = nib.load(out / "nifti" / "dicom" / "j2k.nii.gz")
    labels = np.asarray(nifti.dataobj)[..., 0].T
    assert set(np.unique(labels)) == {0, 1, 2} and nifti.header.get_zooms()[:2] == pytest.approx(
        (0.35, 0.35)
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"ok": 7, "skipped": 3, "failed": 2} and summary["inputs"] == 12
    ok = [r for r in _report(out).values() if r["status"] == "ok"]
    sources = [r["pixel_spacing_source"] for r in ok]
    assert summary["pixel_spacing_sources"] == {s: sources.count(s) for s in set(sources)}
    assert summary["qa_flags"] == {}  # right radiographs: nothing flagged
    assert len(summary["model"]["checkpoint_sha256"]) == 64 and summary["software"]["monai"]
    # the decoders too: lossy JPEG decoders may differ by a unit (pipeline.io.decoders)
    assert {"imagecodecs", "pillow", "pyjpegls"} <= summary["software"].keys()
    assert summary["software"]["imagecodecs"] != "not installed"


def test_summary_times_every_stage_in_wall_and_cpu_seconds(segmented):
    """Worker stages are timed by the worker's CPU (a sleep in a worker would not count)."""
    run = json.loads((segmented["out"] / "summary.json").read_text())["this_run"]
    wall, cpu = run["stage_seconds"], run["stage_cpu_seconds"]
    assert set(wall) == set(cpu)
    for stage in ("decode", "preprocess", "forward", "postprocess", "seg_encode", "write"):
        assert cpu[stage] > 0, stage
    assert cpu["forward"] > 0.2 * wall["forward"]  # the network's threads, not one thread
    assert cpu["postprocess"] <= wall["postprocess"] + 0.05  # one thread per worker


def test_inputs_are_never_modified(segmented):
    assert _digest(segmented["root"]) == segmented["before"]


def _timeless(report: dict[str, dict]) -> dict[str, dict]:
    return {p: {k: v for k, v in r.items() if k != "seconds"} for p, r in report.items()}


def _lungseg(*args: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("lungseg")
    return subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_resume_after_kill_9_gives_the_uninterrupted_outputs(segmented, tmp_path):
    out, root = tmp_path / "out", segmented["root"]
    args = [
        "segment",
        str(root),
        "-o",
        str(out),
        "--workers",
        "0",
        "--batch-size",
        "1",
        "--no-progress",
    ]
    args += ["--formats", "seg,mask,overlay,nifti"]
    proc = _lungseg(*args)
    journal = out / "journal.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(journal.read_text().splitlines()) - 1
    assert 3 <= done_before < 12
    rerun = _lungseg(*args)
    assert rerun.wait(timeout=300) == EXIT_FAILED, rerun.stdout.read().decode()
    assert f"({12 - done_before} processed now" in rerun.stdout.read().decode()
    for fmt in ("masks", "overlays", "nifti"):  # stale temporaries of the killed run are gone
        assert _digest(out / fmt) == _digest(segmented["out"] / fmt)
    for seg_file in (segmented["out"] / "seg").rglob("*.dcm"):
        a, b = (
            pydicom.dcmread(seg_file),
            pydicom.dcmread(out / "seg" / seg_file.relative_to(segmented["out"] / "seg")),
        )
        assert a.SOPInstanceUID == b.SOPInstanceUID and a.PixelData == b.PixelData
    assert _timeless(_report(out)) == _timeless(_report(segmented["out"]))


def test_overwrite_redoes_and_a_changed_run_needs_it(radiograph_folder, tmp_path, capsys):
    one = radiograph_folder["root"] / "png"
    argv = [
        "segment",
        str(one),
        "-o",
        str(tmp_path),
        "--workers",
        "0",
        "--no-progress",
        "--formats",
        "mask",
    ]
    assert main(argv) == EXIT_OK
    assert main(argv) == EXIT_OK and "(0 processed now" in capsys.readouterr().out
    assert main([*argv, "--overwrite"]) == EXIT_OK and "(2 processed now" in capsys.readouterr().out
    assert main([*argv[:-1], "mask,overlay"]) == EXIT_USAGE
    assert "use --overwrite" in capsys.readouterr().err


def test_shards_partition_the_inputs(radiograph_folder):
    root = radiograph_folder["root"]
    everything = {j.key for j in plan([root], None)}
    parts = [{j.key for j in plan([root], (i, 3))} for i in (1, 2, 3)]
    assert set().union(*parts) == everything and sum(map(len, parts)) == len(everything)
    assert parts == [{j.key for j in plan([root], (i, 3))} for i in (1, 2, 3)]  # deterministic


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--shard", "0/4"], "I must be between 1 and N"),
        (["--shard", "half"], "must be I/N"),
        (["--formats", "seg,jpeg"], "OutputFormat 'jpeg' is not one of: seg, mask, overlay, nifti"),
        (["--workers", "many"], "--workers 'many' must be auto or a whole number >= 0"),
        (["--workers", "-1"], "--workers '-1' must be auto or a whole number >= 0"),
        (["--batch-size", "0"], "--batch-size 0 must be >= 1"),
    ],
)
def test_usage_errors_quote_the_value(tmp_path, option, message, capsys):
    assert main(["segment", str(tmp_path), "-o", str(tmp_path / "o"), *option]) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_parse_shard():
    assert parse_shard("2/5") == (2, 5) and parse_shard(None) is None


def test_sources_with_malformed_headers_get_a_seg_or_a_note_and_are_not_tried_again(
    pixels, tmp_path
):
    """A dashed study date and a spelled-out sex are mended in the SEG, and a Photometric
    Interpretation left out is assumed (the reason says so), as is the transfer syntax of a
    dataset written without file meta (its pixels were refused); a source without a
    Series Instance UID has nothing a SEG could reference: its row says so (masks written)
    and is journalled, not retried on every run as a failure to write would be."""
    from pipeline.io.convert import build_dicom, write_dicom

    root, out = tmp_path / "in", tmp_path / "out"
    mended = build_dicom(pixels, "mono2-16bit", name="mended")
    mended.StudyDate, mended.PatientSex, mended.SpecificCharacterSet = "2023-01-31", "Male", ""
    del mended.PhotometricInterpretation  # pydicom refused the pixels
    write_dicom(mended, root / "mended.dcm")
    unreferenced = build_dicom(pixels, "mono2-16bit", name="unreferenced")
    del unreferenced.SeriesInstanceUID
    write_dicom(unreferenced, root / "unreferenced.dcm")
    raw = build_dicom(pixels, "mono2-16bit", name="raw")  # as old archives write it
    write_raw_dataset(raw, root / "IM0001", implicit=False, little=False)
    argv = ["segment", str(root), "-o", str(out), "--no-progress", "--formats", "seg,mask"]
    assert main([*argv, "--workers", "0"]) == EXIT_OK
    rows = {Path(r["path"]).name: r for r in _report(out).values()}
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert rows["mended.dcm"]["reason"] == (
        "assumed Photometric Interpretation MONOCHROME2 (the file has '')"
    )
    seg = pydicom.dcmread(out / "seg" / "mended.dcm")
    assert (seg.StudyDate, seg.PatientSex) == ("20230131", "M")
    assert rows["unreferenced.dcm"]["reason"] == (
        "no SEG: the source has no SeriesInstanceUID, by which a SEG must reference it"
    )
    assert not (out / "seg" / "unreferenced.dcm").exists()
    assert (out / "masks" / "unreferenced.png").is_file()
    assert rows["IM0001"]["reason"] == (
        "assumed Explicit VR Big Endian (no Transfer Syntax UID: read as the header is encoded)"
    )
    seg = pydicom.dcmread(out / "seg" / "IM0001.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == raw.SeriesInstanceUID
    assert main(argv) == EXIT_OK
    assert json.loads((out / "summary.json").read_text())["this_run"]["processed"] == 0


def test_seg_objects_pass_dciodvfy(segmented):
    import shutil

    exe = shutil.which("dciodvfy")
    if exe is None:
        message = "dciodvfy not installed (Debian package dicom3tools; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    files = sorted((segmented["out"] / "seg").rglob("*.dcm"))
    assert len(files) == 5
    for path in files:
        proc = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True)
        # no Error and no Warning line (a source without Study Time would leave one: README)
        problems = [
            line
            for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith(("Error", "Warning"))
        ]
        assert not problems, f"{path}: {problems}"


def test_shards_can_share_an_output_folder(radiograph_folder, tmp_path):
    root = radiograph_folder["root"] / "dicom"
    argv = ["segment", str(root), "-o", str(tmp_path), "--workers", "0", "--no-progress"]
    for shard in ("1/2", "2/2"):
        assert main([*argv, "--formats", "mask", "--shard", shard]) == EXIT_OK
    rows = [_report_file(tmp_path / f"report-shard-{i}-of-2.csv") for i in (1, 2)]
    assert sorted(p for r in rows for p in r) == sorted(
        str(p) for p in root.rglob("*") if p.is_file()
    )
    assert {p.name for p in tmp_path.glob("journal*")} == {
        "journal-shard-1-of-2.jsonl",
        "journal-shard-2-of-2.jsonl",
    }


def _report_file(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return [row["path"] for row in csv.DictReader(fh)]


def test_inputs_that_would_share_outputs_are_not_overwritten(radiograph_folder, tmp_path):
    png = next((radiograph_folder["root"] / "png").iterdir())
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "case.png").write_bytes(png.read_bytes())
    (inputs / "case.dcm").write_bytes((radiograph_folder["root"] / "dicom/j2k.dcm").read_bytes())
    out = tmp_path / "out"
    argv = ["segment", str(inputs), "-o", str(out), "--workers", "0", "--no-progress"]
    assert main([*argv, "--formats", "mask"]) == EXIT_FAILED
    report = _report(out)
    assert report[str(inputs / "case.dcm")]["status"] == "ok"
    reason = report[str(inputs / "case.png")]["reason"]
    assert report[str(inputs / "case.png")]["status"] == "failed"
    assert reason == f"its outputs would overwrite those of {inputs / 'case.dcm'}"


def test_a_rerun_with_a_changed_threshold_is_refused_without_overwrite(tmp_path, data_dir, capsys):
    import shutil

    from pipeline.inference.bundle import BUNDLE

    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("docs", "*.ts"))
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("MCUCXR_0001_0.png", "CHNCXR_0001_0.png"):
        shutil.copy(data_dir / "images" / name, inputs / name)
    argv = ["segment", str(inputs), "-o", str(tmp_path / "out"), "--no-progress", "--workers", "0"]
    argv += ["--bundle", str(bundle), "--formats", "mask"]
    assert main(argv) == EXIT_OK
    assert main(argv) == EXIT_OK  # same model and config: resumed, nothing redone
    config = bundle / "configs" / "inference.json"
    config.write_text(config.read_text().replace('"threshold": 0.5', '"threshold": 0.7'))
    capsys.readouterr()
    assert main(argv) == EXIT_USAGE
    assert "model_digest" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == EXIT_OK
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model"]["config_sha256"] != summary["model"]["checkpoint_sha256"]
    assert summary["this_run"]["processed"] == 2


def test_a_journal_line_cut_by_a_kill_is_dropped_before_appending(tmp_path):
    from pipeline.inference.report import Journal

    header = {"started": "20261201000000", "checkpoint_sha256": "c", "formats": ["mask"]}
    journal = Journal(tmp_path, header)
    journal.record("/in/a.png", {"path": "/in/a.png", "status": "ok"})
    journal.close()
    with open(journal.path, "a") as fh:
        fh.write('{"key": "/in/b.png", "row": {"pa')  # the kill came mid-line
    again = Journal(tmp_path, header)
    assert again.done("/in/a.png") and not again.done("/in/b.png")
    again.record("/in/b.png", {"path": "/in/b.png", "status": "ok"})
    again.close()
    lines = journal.path.read_text().splitlines()
    assert [json.loads(line).get("key") for line in lines[1:]] == ["/in/a.png", "/in/b.png"]


def _png_folder(tmp_path, data_dir, count=4) -> Path:
    import shutil

    from pipeline.training.data import load_split

    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in load_split(data_dir, "test", count):
        shutil.copy(case["image"], inputs / Path(case["image"]).name)
    return inputs


@pytest.mark.parametrize("where", ["png-writer", "file-inline", "file-on-writer-threads"])
def test_disk_full_stops_the_batch_journals_nothing_unfinished_and_a_rerun_completes(
    tmp_path, data_dir, monkeypatch, capsys, where
):
    """The disk fills from the third mask on: as the PNG is saved, or while its bytes are
    written (below the encoder), inline or on the writer threads slow storage gets
    (pipeline.io.atomic.concurrent_writes). The batch stops naming the folder, the journal
    lists only the images whose files are whole, no temporary is left; a rerun completes."""
    import errno
    import threading

    from pipeline.inference import outputs
    from pipeline.io import atomic

    inputs, out = _png_folder(tmp_path, data_dir), tmp_path / "out"
    owner, name = (outputs, "save_png") if where == "png-writer" else (atomic, "_write_all")
    real, calls = getattr(owner, name), []

    def full_after_two(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, full_after_two)
    threads = where == "file-on-writer-threads"
    monkeypatch.setattr(atomic, "SLOW_FSYNC_SECONDS", -1.0 if threads else 3600.0)
    argv = ["segment", str(inputs), "-o", str(out), "--no-progress", "--workers", "0"]
    argv += ["--formats", "mask", "--batch-size", "1"]
    assert main(argv) == EXIT_FAILED
    err = capsys.readouterr().err
    assert str(out) in err and "No space left on device" in err
    journal = (out / "journal.jsonl").read_text().splitlines()[1:]
    assert len(journal) == 2  # only the two images whose mask was written
    assert not list(out.rglob("*.tmp"))
    assert all(name.startswith("lungseg-writer") == threads for name in calls), calls
    monkeypatch.setattr(owner, name, real)
    assert main(argv) == EXIT_OK
    report = _report(out)
    assert len(report) == 4 and {r["status"] for r in report.values()} == {"ok"}
    assert len(list((out / "masks").glob("*.png"))) == 4


def test_a_failure_while_writing_is_reported_but_retried_by_the_next_run(
    tmp_path, data_dir, monkeypatch
):
    from pipeline.inference import outputs

    inputs, out = _png_folder(tmp_path, data_dir, 2), tmp_path / "out"
    victim = sorted(inputs.iterdir())[0].stem
    real = outputs.write_overlay

    def broken(image, m, path):
        if Path(path).stem == victim:
            raise ValueError("a bug in the overlay")
        return real(image, m, path)

    monkeypatch.setattr(outputs, "write_overlay", broken)
    argv = ["segment", str(inputs), "-o", str(out), "--no-progress", "--workers", "0"]
    argv += ["--formats", "mask,overlay"]
    assert main(argv) == EXIT_FAILED
    failed = [r for r in _report(out).values() if r["status"] == "failed"]
    assert len(failed) == 1 and "a bug in the overlay" in failed[0]["reason"]
    monkeypatch.setattr(outputs, "write_overlay", real)
    assert main(argv) == EXIT_OK  # not journalled as done: tried again, now ok
    assert {r["status"] for r in _report(out).values()} == {"ok"}


def test_two_runs_over_the_same_files_write_identical_seg_files(
    tmp_path, radiograph_folder, monkeypatch
):
    """Every UID derives from the source and the model, every date is the run's."""
    import pipeline.inference.segment as segment_module

    real = segment_module.time.strftime  # the run's start time; others (pydicom) keep theirs

    def run_start(fmt: str, *moment: object) -> str:
        return real(fmt, *moment) if moment else "20261201120000"

    monkeypatch.setattr(segment_module.time, "strftime", run_start)
    root, digests = radiograph_folder["root"] / "dicom", []
    for run in ("a", "b"):
        out = tmp_path / run
        argv = ["segment", str(root), "-o", str(out), "--no-progress", "--formats", "seg"]
        assert main([*argv, "--workers", "1"]) == EXIT_OK
        digests.append(_digest(out / "seg"))
    assert digests[0] == digests[1] and len(digests[0]) == 5
    seg = pydicom.dcmread(next((tmp_path / "a" / "seg").rglob("*.dcm")))
    assert seg.InstanceCreationDate == seg.ContentDate == "20261201"
    assert seg.InstanceCreationTime == seg.ContentTime == "120000"


def _journalled(out: Path) -> dict[str, dict]:
    """The journal's lines after its header, by input path (the last line of each wins)."""
    lines = (out / "journal.jsonl").read_text().splitlines()[1:]
    return {line["row"]["path"]: line for line in map(json.loads, lines)}


def test_a_file_gone_after_listing_is_reported_and_tried_again_once_back(
    tmp_path, data_dir, monkeypatch
):
    """A file that cannot be opened (moved away, no permission, an I/O error) says nothing
    of its content: it was journalled as failed, so a rerun never tried it again."""
    import pipeline.inference.segment as segment_module

    inputs, out = _png_folder(tmp_path, data_dir, 2), tmp_path / "out"
    victim = sorted(inputs.iterdir())[0]
    aside = tmp_path / victim.name
    real_plan = segment_module.plan

    def plan_then_move(*args):
        jobs = real_plan(*args)
        victim.rename(aside)  # gone between listing and reading
        return jobs

    monkeypatch.setattr(segment_module, "plan", plan_then_move)
    argv = ["segment", str(inputs), "-o", str(out), "--no-progress", "--workers", "0"]
    argv += ["--formats", "mask"]
    assert main(argv) == EXIT_FAILED
    row = _report(out)[str(victim)]
    assert row["status"] == "failed" and "cannot be opened" in row["reason"]
    assert "tried again on the next run" in row["reason"]
    assert str(victim) not in _journalled(out)
    monkeypatch.setattr(segment_module, "plan", real_plan)
    aside.rename(victim)
    assert main(argv) == EXIT_OK
    assert {r["status"] for r in _report(out).values()} == {"ok"}


def test_a_file_still_being_copied_is_tried_again_once_it_has_changed(tmp_path, data_dir):
    """A copy read half-written fails as truncated; it was journalled for good, so the rerun
    meant to pick up the rest of an export never tried it again. Unchanged, it is not read
    again."""
    inputs, out = _png_folder(tmp_path, data_dir, 2), tmp_path / "out"
    growing = sorted(inputs.iterdir())[0]
    whole = growing.read_bytes()
    growing.write_bytes(whole[: len(whole) // 3])
    argv = ["segment", str(inputs), "-o", str(out), "--no-progress", "--workers", "0"]
    argv += ["--formats", "mask"]
    assert main(argv) == EXIT_FAILED
    assert _report(out)[str(growing)]["status"] == "failed"
    assert _journalled(out)[str(growing)]["source"]  # the file as it was read
    assert main(argv) == EXIT_FAILED  # unchanged: still failed, not read again
    assert json.loads((out / "summary.json").read_text())["this_run"]["processed"] == 0
    growing.write_bytes(whole)  # the copy completes
    assert main(argv) == EXIT_OK
    assert {r["status"] for r in _report(out).values()} == {"ok"}
    assert (out / "masks" / f"{growing.stem}.png").is_file()


@pytest.mark.parametrize("count", [None, 2])
def test_pixels_pass_through_the_shared_slots_and_every_slot_comes_back(
    radiograph_folder, tmp_path, monkeypatch, count
):
    """The same files as with no workers (nothing shared); with 2 slots for 9 images in
    flight, each slot is reused many times and the rest go through the pipes."""
    import pipeline.inference.segment as segment_module
    from pipeline.inference.slots import SlotRef, Slots

    root = radiograph_folder["root"] / "dicom"
    formats = ["--formats", "seg,mask,overlay", "--no-progress", "--batch-size", "3"]
    seen, sent, real_run = [], [], segment_module.Segmenter.run

    def run(self, jobs):
        seen.append(self)
        return real_run(self, jobs)

    def from_slot(self, decoded):  # which inputs came back through a slot
        sent.append(isinstance(decoded.get("item", {}).get("image"), SlotRef))
        return real_from_slot(self, decoded)

    real_from_slot = segment_module.Segmenter._from_slot
    monkeypatch.setattr(segment_module.Segmenter, "run", run)
    monkeypatch.setattr(segment_module.Segmenter, "_from_slot", from_slot)
    if count is not None:
        monkeypatch.setattr(segment_module, "Slots", lambda n: Slots(count))
    assert main(["segment", str(root), "-o", str(tmp_path / "a"), "--workers", "2", *formats]) == 0
    assert seen[0].slots.in_use == 0 and not seen[0]._slot_of  # every slot given back
    assert any(sent) and (all(sent) if count is None else not all(sent))
    assert main(["segment", str(root), "-o", str(tmp_path / "b"), "--workers", "0", *formats]) == 0
    for kind in ("masks", "overlays"):
        a, b = _digest(tmp_path / "a" / kind), _digest(tmp_path / "b" / kind)
        assert a == b, _png_differences(tmp_path / "a" / kind, tmp_path / "b" / kind, a, b)
    assert len(_digest(tmp_path / "a" / "masks")) == 5


def _png_differences(a: Path, b: Path, digests_a: dict, digests_b: dict) -> str:
    """Which PNGs differ between two output folders, and how (bytes only, or pixels where)."""
    lines = []
    for name in sorted(set(digests_a) | set(digests_b)):
        if digests_a.get(name) == digests_b.get(name):
            continue
        if name not in digests_a or name not in digests_b:
            lines.append(f"{name}: only in {'b' if name not in digests_a else 'a'}")
            continue
        pa, pb = (np.asarray(Image.open(root / name)) for root in (a, b))
        if pa.shape != pb.shape or not np.array_equal(pa, pb):
            where = np.argwhere(pa != pb) if pa.shape == pb.shape else np.zeros((0, 2), int)
            box = f"{where.min(0).tolist()}..{where.max(0).tolist()}" if len(where) else "-"
            lines.append(f"{name}: pixels differ ({len(where)} at {box}, shapes {pa.shape})")
        else:
            lines.append(f"{name}: same pixels, different bytes ({digests_a[name][:8]})")
    return "; ".join(lines)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_of_a_killed_run_end_with_it(radiograph_folder, tmp_path):
    out = tmp_path / "out"
    args = ["segment", str(radiograph_folder["root"]), "-o", str(out), "--workers", "2"]
    proc = _lungseg(*args, "--batch-size", "1", "--no-progress")
    workers = _wait_for_processes(child_pids, proc, 2)
    assert proc.poll() is None and len(workers) >= 2, "no workers seen before the run ended"
    _kill_and_check_none_outlive(proc, workers)


def _wait_for_processes(find: Any, proc: subprocess.Popen, count: int) -> set[int]:
    """``find(proc.pid)`` once it lists ``count`` processes (or after 120 s)."""
    deadline = time.time() + 120
    while time.time() < deadline and len(find(proc.pid)) < count:
        time.sleep(0.05)
    return find(proc.pid)


def _kill_and_check_none_outlive(proc: subprocess.Popen, processes: set[int]) -> None:
    """SIGKILL ``proc``; each of ``processes`` must end within 10 s (killed, failing, if not)."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(is_running(p) for p in processes):
        time.sleep(0.1)
    alive = [p for p in processes if is_running(p)]
    for p in alive:  # do not leave them behind if the assertion fails
        os.kill(p, signal.SIGKILL)
    assert not alive, f"processes {alive} outlived the killed run"


class _RecordingScorer:
    """A TB scorer stand-in that keeps the images it was given (what ``--tb`` passes)."""

    notice, threshold = "research only (test)", 0.5

    def __init__(self):
        self.images = []

    def inputs(self, image, right, left):
        self.images.append(image)
        return {"crop": np.zeros(1), "features": np.zeros(1)}

    def scores(self, inputs):
        return np.full(len(inputs), 0.25, np.float32)

    def identity(self):
        return {"checkpoint_sha256": "test", "name": "recorder"}


def test_tb_inputs_are_made_from_the_float_image_not_the_8_bit_overlay(radiograph_folder, tmp_path):
    from scipy import ndimage

    from pipeline.inference.segment import segment
    from pipeline.io.convert import DicomVariant, build_dicom, write_dicom
    from pipeline.io.reader import read_cxr

    name = radiograph_folder["cases"][
        "png/" + next(p.name for p in (radiograph_folder["root"] / "png").iterdir())
    ]
    pixels = load_png(radiograph_folder["root"] / "png" / name)
    twelve_bit = np.round(ndimage.gaussian_filter(pixels.astype(np.float32), 1.5) * 16)
    ds = build_dicom(pixels, DicomVariant.MONO2_16BIT, name="twelve", spacing_mm=0.35)
    ds.set_pixel_data(twelve_bit.astype(np.uint16), "MONOCHROME2", 12)
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTSequence"):
        if keyword in ds:
            delattr(ds, keyword)
    source = tmp_path / "in" / "twelve.dcm"
    write_dicom(ds, source)
    scorer = _RecordingScorer()
    summary = segment([source], tmp_path / "out", formats=["mask"], workers=0, tb_model=scorer)
    assert summary["counts"]["ok"] == 1 and len(scorer.images) == 1
    image, _ = read_cxr(source)
    assert scorer.images[0].dtype == np.float32
    np.testing.assert_array_equal(scorer.images[0], image)  # no 8-bit rounding on the way
    assert len(np.unique(image)) > 256  # the case where rounding would change features


def test_shard_auto_reads_slurm_arrays_and_torchrun(monkeypatch):
    from pipeline.inference.segment import auto_shard, rank_device

    slurm = {"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert auto_shard({**slurm, "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2"}) == (
        4,
        4,
    )
    assert auto_shard({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3",
                       "SLURM_ARRAY_TASK_MIN": "1"}) == (3, 3)  # fmt: skip
    assert auto_shard({"RANK": "0", "WORLD_SIZE": "8", "LOCAL_RANK": "0"}) == (1, 8)
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID"):
        auto_shard({})
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert parse_shard("auto") == (3, 3)
    assert rank_device("cpu", {"LOCAL_RANK": "1"}) == "cpu"
    assert rank_device("auto", {}) == "auto"


def test_sr_needs_seg(radiograph_folder, tmp_path, capsys):
    argv = ["segment", str(radiograph_folder["root"]), "-o", str(tmp_path), "--formats", "sr"]
    assert main([*argv, "--no-progress"]) == EXIT_USAGE
    assert "sr references the SEG; add seg" in capsys.readouterr().err


def test_precision_is_chosen_recorded_and_kept_per_output_folder(tmp_path, pixels, lung_mask):
    dicom_folder(tmp_path / "in", pixels)
    runs = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / precision
        argv = ["segment", str(tmp_path / "in"), "-o", str(out), "--no-progress"]
        assert main([*argv, "--formats", "mask", "--precision", precision]) == EXIT_OK
        summary = json.loads((out / "summary.json").read_text())
        assert summary["model"]["precision"] == precision
        fused = precision == "bfloat16" and bfloat16_fused("cpu")
        assert summary["model"]["numerics"] == ("bfloat16-fused" if fused else "")
        runs[precision] = (summary["model"]["digest"], load_png(out / "masks" / "0.png") > 0)
    assert runs["float32"][0] != runs["bfloat16"][0]  # another model identity
    assert dice(runs["float32"][1], runs["bfloat16"][1]) > 0.99
    assert dice_where_decided(runs["bfloat16"][1], lung_mask) > 0.9
    argv = ["segment", str(tmp_path / "in"), "-o", str(tmp_path / "float32"), "--no-progress"]
    assert main([*argv, "--formats", "mask", "--precision", "bfloat16"]) == EXIT_USAGE


def test_lung_field_is_chosen_recorded_and_kept_per_output_folder(tmp_path, pixels, lung_mask):
    from pipeline.transforms.lung_field import retrocardiac_region

    dicom_folder(tmp_path / "in", pixels)
    region = retrocardiac_region(lung_mask)
    claimed = {}
    for field in ("anatomical", "visible"):
        argv = ["segment", str(tmp_path / "in"), "-o", str(tmp_path / field), "--no-progress"]
        assert main([*argv, "--formats", "mask", "--lung-field", field]) == EXIT_OK
        summary = json.loads((tmp_path / field / "summary.json").read_text())
        assert summary["model"]["lung_field"] == field
        mask = load_png(tmp_path / field / "masks" / "0.png") > 0
        assert dice_where_decided(mask, lung_mask) > 0.9
        claimed[field] = (mask & region).sum() / region.sum()
    assert (
        claimed["anatomical"] > claimed["visible"] + 0.05
    )  # the lung behind the heart (0.12 vs 0.01)
    argv = ["segment", str(tmp_path / "in"), "-o", str(tmp_path / "visible"), "--no-progress"]
    assert main([*argv, "--formats", "mask"]) == EXIT_USAGE  # the default is anatomical


def test_the_journal_is_fsynced_once_per_batch_and_stays_complete(tmp_path, pixels, monkeypatch):
    import pipeline.inference.report as report

    dicom_folder(tmp_path / "in", pixels, count=7, variant="mono2-8bit")
    journal_fsyncs, real_sync = [], report.Journal.sync

    def counting_sync(self):  # Journal.sync, noting the rows each fsync covers
        if self._lines:
            journal_fsyncs.append(len(self.rows))
        real_sync(self)

    monkeypatch.setattr(report.Journal, "sync", counting_sync)
    argv = ["segment", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-progress"]
    assert main([*argv, "--formats", "mask", "--workers", "0", "--batch-size", "2"]) == EXIT_OK
    assert 1 <= len(journal_fsyncs) <= 5  # 7 inputs in batches of 2: not one fsync per input
    assert journal_fsyncs[-1] == 7  # the last fsync covers every input
    lines = (tmp_path / "out" / "journal.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 7  # the header and every input


@pytest.mark.parametrize("workers", ["0", "1"])
def test_output_folders_are_fsynced_once_per_batch_before_the_lines_claiming_them(
    tmp_path, pixels, monkeypatch, workers
):
    """Before, every output's folder was fsync'ed after its rename: 3 fsyncs per image with
    the default formats, each a wait on slow (network) storage. Now the journal fsyncs the
    folders once per batch, and only then writes the lines of the images written there."""
    import pipeline.inference.report as report
    from pipeline.io import atomic

    dicom_folder(tmp_path / "in", pixels, count=7, variant="mono2-8bit")
    out = tmp_path / "out"
    events, real_fsync_path = [], atomic.fsync_path

    def noting(path):  # the job's process: folder fsyncs and the journal's lines then
        journal = out / "journal.jsonl"
        lines = len(journal.read_text().splitlines()) if journal.is_file() else 0
        events.append((str(path), lines))
        real_fsync_path(path)

    monkeypatch.setattr(atomic, "fsync_path", noting)
    monkeypatch.setattr(
        report, "sync_folders", lambda fs: [noting(f) for f in sorted(fs)], raising=False
    )
    argv = ["segment", str(tmp_path / "in"), "-o", str(out), "--no-progress"]
    assert main([*argv, "--workers", workers, "--batch-size", "2"]) == EXIT_OK
    folders = {str(out / f) for f in ("seg", "masks", "overlays")}
    in_outputs = [e for e in events if e[0] in folders]
    assert {e[0] for e in in_outputs} == folders
    assert len(in_outputs) <= 3 * 5  # 7 images in batches of 2: not 3 x 7
    lines = (out / "journal.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 7
    for folder in folders:  # synced before the first batch's lines, and before the last
        assert min(n for f, n in in_outputs if f == folder) == 1  # the header alone
        assert max(n for f, n in in_outputs if f == folder) < len(lines)
    for row in map(json.loads, lines[1:]):
        assert row["row"]["status"] == "ok" and "folders" not in row["row"]
    report_rows = (out / "report.csv").read_text()
    assert "folders" not in report_rows.splitlines()[0]


def test_on_slow_storage_an_images_files_are_written_on_writer_threads(
    tmp_path, pixels, monkeypatch
):
    """Where fsyncs take milliseconds (a network share), SEG, mask and overlay wait for the
    disk together (pipeline.io.atomic.concurrent_writes): before, each fsync was waited for
    in turn by the thread that encoded the files."""
    import threading

    from pipeline.io import atomic

    dicom_folder(tmp_path / "in", pixels, count=4, variant="mono2-8bit")
    writers, real_fsync = [], os.fsync

    def slow(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if name.endswith(".tmp") and any(f"/{d}/" in name for d in ("seg", "masks", "overlays")):
            writers.append(threading.current_thread().name)
        time.sleep(0.003)
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", slow)
    monkeypatch.setattr(atomic, "_recent_fsync", 0.0, raising=False)
    argv = ["segment", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-progress"]
    assert main([*argv, "--workers", "0", "--batch-size", "1"]) == EXIT_OK
    assert len(writers) == 4 * 3
    assert not writers[0].startswith("lungseg-writer")  # nothing measured yet
    assert all(name.startswith("lungseg-writer") for name in writers[-3:]), writers


def test_zip_and_tar_archives_are_segmented_as_folders_named_after_them(
    tmp_path, pixels, monkeypatch
):
    """Before, an archive given as an input was one failed row ("not DICOM and not an image
    format"): the user had to extract it first."""
    import tarfile
    import zipfile

    from pipeline.inference import segment as segment_module

    dicom_folder(tmp_path / "files", pixels, count=2, variant="mono2-8bit")
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as zf:
        for name in ("0.dcm", "1.dcm"):
            zf.write(tmp_path / "files" / name, f"study/{name}")
    with tarfile.open(tmp_path / "set.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "files" / "0.dcm", "0.dcm")
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    out = tmp_path / "out"
    inputs = [str(tmp_path / n) for n in ("export.zip", "set.tar.gz", "broken.zip")]
    argv = ["segment", *inputs, "-o", str(out), "--no-progress", "--formats", "mask,seg"]
    assert main(argv) == EXIT_FAILED  # the broken archive
    report = _report(out)
    assert set(report) == {  # each member named in its archive
        f"{tmp_path}/export.zip/study/0.dcm",
        f"{tmp_path}/export.zip/study/1.dcm",
        f"{tmp_path}/set.tar.gz/0.dcm",
        str(tmp_path / "broken.zip"),
    }
    assert report[str(tmp_path / "broken.zip")]["status"] == "failed"
    assert "neither ZIP nor TAR" in report[str(tmp_path / "broken.zip")]["reason"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"] == 4 and summary["counts"]["failed"] == 1
    assert {r["status"] for p, r in report.items() if "broken" not in p} == {"ok"}
    masks = sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*.png"))
    assert masks == ["export/study/0.png", "export/study/1.png", "set/0.png"]
    assert len(list((out / "seg").rglob("*.dcm"))) == 3
    # the members were written out one by one and removed: no copy of either archive
    assert _staged_files(out) == [out / "archives" / ".set.tar-members.json"]
    (tmp_path / "broken.zip").unlink()  # a rerun: nothing redone, no archive read again
    monkeypatch.setattr(segment_module, "TarStream", lambda *a: pytest.fail("read again"))
    listed = (out / "archives" / ".set.tar-members.json").stat().st_mtime_ns
    assert main(argv[:1] + inputs[:2] + argv[4:]) == EXIT_OK
    assert (out / "archives" / ".set.tar-members.json").stat().st_mtime_ns == listed
    assert len(_report(out)) == 3


def _zip_of(folder: Path, archive: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"study/{path.name}")
    return archive


def _tar_of(folder: Path, archive: Path) -> Path:
    import tarfile

    with tarfile.open(archive, "w:gz") as tf:
        for path in sorted(folder.iterdir()):
            tf.add(path, f"study/{path.name}")
    return archive


def _staged_files(out: Path) -> list[Path]:
    """The files under OUT/archives (members written out, and TAR listings kept)."""
    return sorted(p for p in (out / "archives").rglob("*") if p.is_file())


@pytest.mark.parametrize(("kind", "most"), [("zip", 5), ("tar.gz", 7)])
def test_an_archive_is_read_a_member_at_a_time_and_never_twice(
    tmp_path, pixels, monkeypatch, kind, most
):
    """Before, an archive was extracted whole first: as much disk again as the archive, and
    no image segmented until the last member was out. Now the disk holds the members in
    flight only (at batch 1 without workers: 2 depths and the batch, 5; a TAR's stream
    writes 2 more ahead), each removed once its row is journalled, and a rerun reads none
    of them again."""
    from pipeline.io import archives

    maker = _zip_of if kind == "zip" else _tar_of
    archive = maker(dicom_folder(tmp_path / "files", pixels, count=9), tmp_path / f"x.{kind}")
    out = tmp_path / "out"
    real, present = archives._write_out, []

    def counted(chunks, path, member):
        real(chunks, path, member)
        present.append(len([p for p in _staged_files(out) if p.suffix == ".dcm"]))

    monkeypatch.setattr(archives, "_write_out", counted)
    argv = ["segment", str(archive), "-o", str(out), "--no-progress", "--formats", "mask"]
    argv += ["--workers", "0", "--batch-size", "1"]
    assert main(argv) == EXIT_OK
    assert len(present) == 9 and 2 <= max(present) <= most, present
    assert not any(p.suffix == ".dcm" for p in _staged_files(out))
    masks = sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*.png"))
    assert masks == sorted(f"x/study/{i}.png" for i in range(9))
    leftover = out / "archives" / "x" / "study" / "3.dcm"  # as a killed run leaves one
    leftover.write_bytes(b"staged")
    present.clear()
    assert main(argv) == EXIT_OK
    assert present == [] and not leftover.exists()
    journal = (out / "journal.jsonl").read_text().splitlines()
    (out / "journal.jsonl").write_text("\n".join(journal[:-1]) + "\n")  # killed before it
    last = Path(json.loads(journal[-1])["key"])
    half = last.with_name(f".{last.name}.k1ll3d.tmp")  # ...while writing it out again
    half.write_bytes(b"half")
    assert main(argv) == EXIT_OK
    assert len(present) == 1 and not half.exists()
    assert not any(p.suffix == ".dcm" for p in _staged_files(out))


def test_a_skipped_tar_member_is_not_read_again_while_the_archive_is_unchanged(
    tmp_path, pixels, monkeypatch
):
    """Its row carried the passing copy's signature, which the next run compared with the
    member's: every rerun read the archive again for it."""
    from pipeline.inference import segment as segment_module

    files = dicom_folder(tmp_path / "files", pixels, count=1)
    (files / "notes.dcm").write_bytes(b"not DICOM at all")
    archive = _tar_of(files, tmp_path / "x.tar.gz")
    out = tmp_path / "out"
    argv = ["segment", str(archive), "-o", str(out), "--no-progress", "--formats", "mask"]
    assert main([*argv, "--workers", "0"]) == EXIT_FAILED
    assert _report(out)[f"{archive}/study/notes.dcm"]["status"] == "failed"
    monkeypatch.setattr(segment_module, "TarStream", lambda *a: pytest.fail("read again"))
    assert main([*argv, "--workers", "0"]) == EXIT_FAILED  # the row as it was
    assert _report(out)[f"{archive}/study/notes.dcm"]["status"] == "failed"


def test_a_tar_given_under_two_names_is_read_for_each(tmp_path, pixels):
    """The archive given itself and found in a folder given too: two folders of outputs,
    each from its own reading of the archive (one stream for both lost the second's)."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    archive = _tar_of(dicom_folder(tmp_path / "files", pixels, count=2), data / "sub" / "x.tar.gz")
    out = tmp_path / "out"
    argv = ["segment", str(data), str(archive), "-o", str(out), "--no-progress"]
    assert main([*argv, "--formats", "mask", "--workers", "0"]) == EXIT_OK
    masks = sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*.png"))
    assert masks == ["sub/x/study/0.png", "sub/x/study/1.png", "x/study/0.png", "x/study/1.png"]
    assert {r["status"] for r in _report(out).values()} == {"ok"}
    assert _report_file(out / "report.csv") == [f"{archive}/study/{i}.dcm" for i in (0, 0, 1, 1)]


def test_a_broken_zip_member_is_a_failed_row_and_the_batch_goes_on(tmp_path, pixels, monkeypatch):
    from pipeline.inference import workers

    archive = _zip_of(dicom_folder(tmp_path / "files", pixels, count=3), tmp_path / "x.zip")
    raw = bytearray(archive.read_bytes())
    raw[raw.index(b"study/1.dcm") + len("study/1.dcm") + 500] ^= 0xFF  # in 1.dcm's data
    archive.write_bytes(bytes(raw))
    out = tmp_path / "out"
    argv = ["segment", str(archive), "-o", str(out), "--no-progress", "--formats", "mask"]
    assert main([*argv, "--workers", "0"]) == EXIT_FAILED
    report = _report(out)
    broken = report[f"{archive}/study/1.dcm"]
    assert broken["status"] == "failed"
    assert "member 'study/1.dcm' of" in broken["reason"] and "x.zip" in broken["reason"]
    assert [r["status"] for p, r in sorted(report.items()) if p != broken["path"]] == ["ok"] * 2
    assert _staged_files(out) == []
    staged = []
    monkeypatch.setattr(workers, "stage", lambda member, path: staged.append(path))
    assert main([*argv, "--workers", "0"]) == EXIT_FAILED  # the archive unchanged: not retried
    assert staged == [] and _report(out)[broken["path"]]["status"] == "failed"


def test_archives_inside_an_input_folder_are_segmented_under_their_folder(tmp_path, pixels):
    """A dataset as a folder of tarballs (images_001.tar.gz, ...) beside loose files."""
    import tarfile

    data = dicom_folder(tmp_path / "data", pixels, count=1, variant="mono2-8bit")
    dicom_folder(tmp_path / "files", pixels, count=2, variant="mono2-8bit")
    (data / "batch1").mkdir()
    for number in ("001", "002"):
        with tarfile.open(data / "batch1" / f"images_{number}.tar.gz", "w:gz") as tf:
            tf.add(tmp_path / "files" / "1.dcm", "1.dcm")
    out = tmp_path / "out"
    argv = ["segment", str(data), "-o", str(out), "--no-progress", "--formats", "mask"]
    assert main(argv) == EXIT_OK
    masks = sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*.png"))
    assert masks == ["0.png", "batch1/images_001/1.png", "batch1/images_002/1.png"]
    report = _report(out)
    assert len(report) == 3 and {r["status"] for r in report.values()} == {"ok"}
    assert not any(p.endswith(".tar.gz") for p in report)  # the archives are not rows


def test_the_network_keeps_every_thread_and_the_workers_yield_to_it(
    radiograph_folder, tmp_path, monkeypatch
):
    import torch

    from pipeline.inference import segment as segment_module
    from pipeline.inference import workers
    from pipeline.inference.predictor import Predictor

    threads, niceness = [], []
    real_forward, real_decode = Predictor.forward, workers.decode
    real_batches = segment_module.Segmenter._batches

    def forward(self, images):  # main process
        threads.append(torch.get_num_threads())
        return real_forward(self, images)

    def decode(*args):  # runs in the forked workers
        return {**real_decode(*args), "niceness": os.nice(0)}

    def batches(self, pool, todo):  # main process: what the workers sent back
        for batch in real_batches(self, pool, todo):
            niceness.extend(d.get("niceness") for _, d in batch)
            yield batch

    monkeypatch.setattr(Predictor, "forward", forward)
    monkeypatch.setattr(workers, "decode", decode)
    monkeypatch.setattr(segment_module.Segmenter, "_batches", batches)
    before = torch.get_num_threads()
    root = radiograph_folder["root"] / "png"
    argv = ["segment", str(root), "-o", str(tmp_path / "o"), "--no-progress", "--formats", "mask"]
    assert main([*argv, "--workers", "2"]) == EXIT_OK
    assert threads and set(threads) == {before}  # not fewer threads for the workers' sake
    assert niceness and set(niceness) == {min(19, os.nice(0) + workers.WORKER_NICENESS)}


def test_auto_workers_are_one_per_usable_cpu_one_fewer_beside_a_gpu():
    assert resolve_workers("auto", "cpu", cpus=2) == 2
    assert resolve_workers("auto", "cuda:1", cpus=16) == 15
    assert resolve_workers("AUTO", "cuda", cpus=1) == 1  # at least one
    assert resolve_workers("auto", "cpu", cpus=96) == MAX_AUTO_WORKERS
    assert resolve_workers("0", "cuda", cpus=8) == 0 and resolve_workers(3, "cpu", cpus=8) == 3
    torchrun = {"LOCAL_WORLD_SIZE": "8", "LOCAL_RANK": "3"}  # 8 GPUs sharing 32 CPUs
    assert resolve_workers("auto", "cuda:3", cpus=32, env=torchrun) == 3
    assert resolve_workers("auto", "cuda:3", cpus=4, env=torchrun) == 1


def test_a_cpu_quota_sizes_the_workers_and_the_summary_says_so(one_cpu_quota, tmp_path, pixels):
    dicom_folder(tmp_path / "in", pixels, count=3, variant="mono2-8bit")
    argv = ["segment", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-progress"]
    assert main([*argv, "--formats", "mask"]) == EXIT_OK
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["counts"]["ok"] == 3
    assert summary["resources"]["usable_cpus"] == 1 and summary["resources"]["workers"] == 1


def _bare_segmenter(tmp_path, monkeypatch, batch_size: int, workers: int) -> tuple:
    """A Segmenter over the shipped bundle whose network never loads, and its journal."""
    from pipeline.inference.predictor import Predictor
    from pipeline.inference.report import Journal
    from pipeline.inference.segment import Segmenter

    model = Predictor(device="cpu", network=False)
    monkeypatch.setattr(model, "load_network", lambda: None)
    journal = Journal(tmp_path, {"started": "20260101000000"}, False, "")
    seg = Segmenter(model, tmp_path, ["mask"], journal, batch_size, workers, progress=False)
    return seg, journal


@pytest.mark.parametrize(("workers", "batch_size", "ahead"), [(2, 8, 16), (12, 4, 24), (0, 3, 6)])
def test_enough_images_decode_ahead_to_keep_every_worker_busy(
    tmp_path, workers, batch_size, ahead, monkeypatch
):
    from concurrent.futures import Future

    seg, journal = _bare_segmenter(tmp_path, monkeypatch, batch_size, workers)
    submitted = []

    def decode(pool, job):  # a decode already done
        submitted.append(job)
        done: Future = Future()
        done.set_result({"error": ("skipped", "a stand-in")})
        return done

    monkeypatch.setattr(seg, "_decode", decode)
    first = next(seg._batches(PoolRotation(object, 0), list(range(100))))
    journal.close()
    assert len(first) == batch_size and len(submitted) == ahead


def test_small_images_count_their_share_towards_replacing_the_workers():
    from pipeline.inference.segment import MIN_RECYCLE_WEIGHT, RECYCLE_PIXELS, recycle_weight

    def decoded(rows, cols):  # as the workers send it (to_wire)
        return {"item": {"image": None, "image_meta": {"original_shape": (rows, cols)}}}

    assert recycle_weight(decoded(512, 512)) == 512 * 512 / RECYCLE_PIXELS == 0.125
    assert recycle_weight(decoded(2048, 2048)) == recycle_weight(decoded(3000, 2500)) == 1
    assert recycle_weight(decoded(64, 64)) == MIN_RECYCLE_WEIGHT
    assert recycle_weight({"error": ("failed", "truncated")}) == 1  # not decoded: in full


def test_the_pool_is_replaced_after_its_weighted_share(tmp_path, monkeypatch):
    from concurrent.futures import Future, ThreadPoolExecutor

    made = []

    def make():
        made.append(ThreadPoolExecutor(1))
        return made[-1]

    def decode(pool, job):  # a 512² image decoded
        done: Future = Future()
        meta = {"original_shape": (512, 512)}
        done.set_result({"item": {"image": None, "image_meta": meta}})
        return done

    seg, journal = _bare_segmenter(tmp_path, monkeypatch, 4, 2)
    monkeypatch.setattr(seg, "_decode", decode)
    with PoolRotation(make, 4) as pools:  # 4 full-size images per pool
        batches = list(seg._batches(pools, list(range(60))))
    journal.close()
    assert sum(map(len, batches)) == 60
    # the 8 images submitted before the first batch came back count 1 each (2 pools); every
    # later 512² image 1/8: 52 more in 2 pools (counting each image as 1: 15 pools)
    assert len(made) == 4 and seg.weight == 0.125


def test_a_pool_is_replaced_without_waiting_for_what_it_still_runs():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    release, made = threading.Event(), []

    def make():
        made.append(ThreadPoolExecutor(1))
        return made[-1]

    with PoolRotation(make, 2) as pools:
        slow = pools.for_next_image().submit(release.wait, 30)  # the first pool, still busy
        assert pools.for_next_image() is made[0]
        fresh = pools.for_next_image()  # the third image: a new pool, the old one not awaited
        assert fresh is made[1] and pools.replaced == 1
        assert fresh.submit(lambda: "decoded").result(timeout=5) == "decoded"
        assert not slow.done()  # the old pool still works on what it was given...
        release.set()
        assert slow.result(timeout=5) is True  # ...and its future is answered
    assert len(made) == 2


#: ``lungseg segment`` as it runs once CUDA is up (every pool then comes from the fork
#: server), on the CPU: ``torch.cuda.is_initialized`` made to say so.
AS_ON_CUDA = """
import os
import sys
import torch
import pipeline.inference.segment as segment
torch.cuda.is_initialized = lambda: True
if os.environ.get("NO_MEMFD"):  # a sandbox forbidding it: slots for forked workers only
    def forbidden(*args):
        raise PermissionError(1, "Operation not permitted")
    os.memfd_create = forbidden
segment.RECYCLE_EVERY = 2
segment.RECYCLE_PIXELS = 1
from pipeline.cli import run
sys.argv = ["lungseg", *sys.argv[1:]]
run()
"""


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children...)."""
    out, stack = set(), [pid]
    while stack:
        found = child_pids(stack.pop())
        out |= found
        stack += found
    return out


@pytest.mark.parametrize("memfd", [True, False])
def test_pools_started_once_cuda_is_up_are_forked_by_the_fork_server(segmented, tmp_path, memfd):
    from pipeline.inference.workers import start_method

    assert start_method(False) == "fork" and start_method(True) == "forkserver"
    out = tmp_path / "out"
    args = ["segment", str(segmented["root"]), "-o", str(out), "--workers", "2"]
    proc = subprocess.run(
        [sys.executable, "-c", AS_ON_CUDA, *args, "--batch-size", "3", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **({} if memfd else {"NO_MEMFD": "1"})},
    )
    assert proc.returncode == segmented["code"], proc.stdout + proc.stderr  # (some inputs fail)
    statuses = {k: row["status"] for k, row in _report(segmented["out"]).items()}
    assert {k: row["status"] for k, row in _report(out).items()} == statuses
    for path in (segmented["out"] / "masks").rglob("*.png"):  # the same masks as forked workers'
        same = out / "masks" / path.relative_to(segmented["out"] / "masks")
        assert np.array_equal(load_png(path), load_png(same)), path


def test_archives_are_read_by_workers_of_the_fork_server(pixels, tmp_path):
    """On a GPU every pool comes from the fork server: a ZIP member (its central directory
    entry) is pickled to the worker that writes it out, a TAR's written by the job's own
    stream; both as the forked workers do, and nothing left behind."""
    files = dicom_folder(tmp_path / "files", pixels, count=4)
    inputs = [_zip_of(files, tmp_path / "x.zip"), _tar_of(files, tmp_path / "y.tar.gz")]
    out = tmp_path / "out"
    args = ["segment", *map(str, inputs), "-o", str(out), "--workers", "2", "--formats", "mask"]
    proc = subprocess.run(
        [sys.executable, "-c", AS_ON_CUDA, *args, "--batch-size", "3", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    masks = sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*.png"))
    assert masks == sorted(f"{n}/study/{i}.png" for n in "xy" for i in range(4))
    assert not any(p.suffix == ".dcm" for p in _staged_files(out))


def test_workers_of_the_fork_server_end_with_a_killed_run(radiograph_folder, tmp_path):
    args = ["segment", str(radiograph_folder["root"]), "-o", str(tmp_path / "out")]
    proc = subprocess.Popen(
        [sys.executable, "-c", AS_ON_CUDA, *args, "--workers", "2", "--batch-size", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    below = _wait_for_processes(descendants, proc, 3)  # the server, its tracker, workers
    assert proc.poll() is None and len(below) >= 3, "no fork server and workers seen"
    _kill_and_check_none_outlive(proc, below)


def test_a_pool_can_be_replaced_only_once_it_has_finished():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    release, made = threading.Event(), []

    def make():
        made.append(ThreadPoolExecutor(1))
        return made[-1]

    with PoolRotation(make, 1, drain_first=lambda: True) as pools:
        slow = pools.for_next_image().submit(release.wait, 30)
        threading.Timer(0.3, release.set).start()
        pools.for_next_image()  # waits for the first pool's work
        assert slow.done() and len(made) == 2


@pytest.mark.parametrize("workers", ["0", "1"])
def test_negatives_and_upside_down_films_are_segmented_the_right_way_and_the_report_says_so(
    pixels, tmp_path, workers
):
    """A file whose pixels are a negative (here: MONOCHROME2 holding one, 512 x 400 so the
    network sees it letterboxed) lost its lungs, one upside down part of them. Through one
    process and through a worker, whose input comes back from the shared slots without its
    MetaTensor metadata (the letterbox and the Patient Orientation travel beside it)."""
    from pipeline.io.convert import build_dicom, write_dicom

    root, out = tmp_path / "in", tmp_path / "out"
    write_dicom(build_dicom(pixels, "mono2-16bit", name="right"), root / "right.dcm")
    write_dicom(build_dicom(255 - pixels, "mono2-16bit", name="neg"), root / "negative.dcm")
    upside_down = np.rot90(pixels, 2).copy()
    write_dicom(build_dicom(upside_down, "mono2-16bit", name="up"), root / "upside_down.dcm")
    argv = ["segment", str(root), "-o", str(out), "--no-progress", "--formats", "seg,mask"]
    assert main([*argv, "--workers", workers]) == EXIT_OK
    rows = {Path(r["path"]).name: r for r in _report(out).values()}
    assert rows["negative.dcm"]["reason"] == f"assumed {NOTES[View.NEGATIVE]}"
    assert rows["negative.dcm"]["qa_flags"] == "inverted_polarity"
    assert rows["right.dcm"]["reason"] == rows["right.dcm"]["qa_flags"] == ""
    masks = [load_png(out / "masks" / f"{n}.png") > 0 for n in ("right", "negative")]
    assert dice(*masks) > 0.97
    assert pydicom.dcmread(out / "seg" / "negative.dcm").SegmentSequence  # the SEG is written
    assert rows["upside_down.dcm"]["reason"] == f"assumed {NOTES[View.ROTATED_180]}"
    assert rows["upside_down.dcm"]["qa_flags"] == "upside_down"
    summary = json.loads((out / "summary.json").read_text())  # the batch at a glance
    assert summary["qa_flags"] == {"inverted_polarity": 1, "upside_down": 1}
    assert summary["pixel_spacing_sources"] == {"none": 3}
    turned = np.rot90(load_png(out / "masks" / "upside_down.png") > 0, 2)  # on the file's grid
    assert dice(masks[0], turned) > 0.97
    for side in ("right", "left"):  # the patient's right lung is on the turned image's right
        area = float(rows["right.dcm"][f"{side}_area_px"])
        assert float(rows["upside_down.dcm"][f"{side}_area_px"]) == pytest.approx(area, rel=0.05)
    as_read = tmp_path / "as_read"  # the check turned off: the negative loses its lungs
    assert main([*argv[:3], str(as_read), *argv[4:], "--view-check", "off"]) == EXIT_OK
    assert _report(as_read)[str(root / "negative.dcm")]["reason"] == ""
    assert dice(masks[0], load_png(as_read / "masks" / "negative.png") > 0) < 0.5


def test_store_back_sends_each_servers_segs_to_that_server_only(tmp_path):
    """Before, every SEG went to the first DICOMweb input's server, another server's too
    (the markers are shared): results landed in the wrong PACS."""
    from pipeline.inference.segment import Job, JobStoreBack
    from pipeline.io.discovery import InputFile, RemoteInstance

    jobs = []
    for url, sop in (("http://a/dicom-web", "1.1"), ("http://b/dicom-web", "2.1")):
        relative = Path("study", "series", f"{sop}.dcm")
        remote = RemoteInstance(url, "study", "series", sop)
        jobs.append(Job(InputFile(tmp_path / "cache" / relative, relative, remote=remote), sop))
        seg = tmp_path / "seg" / "study" / "series" / f"{sop}.dcm"
        seg.parent.mkdir(parents=True, exist_ok=True)
        seg.write_bytes(b"SEG")

    class Server:
        def __init__(self, url: str):
            self.url, self.got = url, []

        def stow(self, files, markers):
            self.got += [f.stem for f in files]
            return len(files)

    servers = [Server("http://a/dicom-web"), Server("http://b/dicom-web")]
    stow = JobStoreBack(servers, tmp_path)
    try:
        assert stow.finish(jobs) == 2
    finally:
        stow.close()
    assert [s.got for s in servers] == [["1.1"], ["2.1"]]
