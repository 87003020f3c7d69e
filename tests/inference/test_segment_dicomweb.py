"""``lungseg segment dicomweb+http://...``: Orthanc as source and, with --store-back, as sink."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pydicom
import pytest

from pipeline.cli import EXIT_FAILED, EXIT_OK, main
from tests.conftest import load_png, needs_orthanc

pytestmark = [needs_orthanc, pytest.mark.slow]


def _push(orthanc: dict, files: list[Path]) -> None:
    """Store files into Orthanc by STOW-RS (each in its own transfer syntax)."""
    from dicomweb_client.api import DICOMwebClient

    DICOMwebClient(url=orthanc["url"]).store_instances([pydicom.dcmread(f) for f in files])


@pytest.fixture()
def archive(orthanc, radiograph_folder, tmp_path, data_dir) -> dict:
    """Six radiographs in six encodings, a lateral view and an SR object, in Orthanc."""
    from pipeline.io.convert import DicomVariant, build_dicom, write_dicom

    root = radiograph_folder["root"]
    files = [*sorted((root / "dicom").rglob("*.dcm")), root / "dicom" / "noextension"]
    name = next(iter(radiograph_folder["cases"].values()))
    extra = build_dicom(load_png(data_dir / "images" / name), DicomVariant.JPEG_LS, name="ls")
    files.append(write_dicom(extra, tmp_path / "ls.dcm"))
    _push(orthanc, [*files, root / "junk" / "lateral.dcm", root / "junk" / "sr.dcm"])
    return {"frontal": {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}}


def _segs_in(orthanc: dict, modality: str = "SEG") -> list:
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url=orthanc["url"]).search_for_instances(
        search_filters={"Modality": modality}
    )


def _rows(out: Path) -> list[dict]:
    with open(out / "report.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_segment_reads_by_qido_wado_and_stores_back_once(orthanc, archive, tmp_path):
    out = tmp_path / "out"
    url = "dicomweb+" + orthanc["url"]
    argv = ["segment", url, "-o", str(out), "--no-progress", "--workers", "1", "--store-back"]
    argv += ["--formats", "seg,mask,sr"]
    assert main(argv) == EXIT_OK
    rows = _rows(out)
    statuses = sorted(r["status"] for r in rows)
    assert statuses == ["ok"] * 6 + ["skipped"] * 2
    assert {r["sop_instance_uid"] for r in rows if r["status"] == "ok"} == archive["frontal"]
    # rows name the instances on the server; their fetched copies are gone once journalled
    assert all(r["path"].startswith(orthanc["url"] + "/studies/") for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["path"].endswith("/instances/" + r["sop_instance_uid"]) for r in ok)
    assert list((out / "dicomweb").rglob("*.dcm")) == []
    segs = _segs_in(orthanc)
    assert len(segs) == 6
    referenced = set()
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=orthanc["url"])
    for attrs in segs:
        ds = pydicom.Dataset.from_json(attrs)
        seg = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        referenced.add(
            seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        )
    assert referenced == archive["frontal"]
    # an SR per radiograph with a pixel spacing (4 of 6), besides the SR pushed in
    no_sr = [r for r in rows if r["reason"].startswith("no SR")]
    assert len(no_sr) == 2 and all(r["status"] == "ok" for r in no_sr)
    assert len(_segs_in(orthanc, "SR")) == 1 + 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stored_back"] == 6 + 4
    # a rerun fetches none of these again (the skipped ones included; the SEGs and SRs
    # stored back are new instances to it, skipped) and stores nothing again
    from pipeline.io.dicomweb import DicomWebSource

    real, first = DicomWebSource.retrieve, {r["path"] for r in rows}

    def once(self, instance):
        assert not any(p.endswith("/instances/" + instance.sop) for p in first), instance
        return real(self, instance)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DicomWebSource, "retrieve", once)
        assert main(argv) == EXIT_OK
    assert json.loads((out / "summary.json").read_text())["stored_back"] == 0
    assert len(_segs_in(orthanc)) == 6 and len(_segs_in(orthanc, "SR")) == 5


def test_a_server_that_fails_mid_run_fails_those_rows_clearly_and_a_rerun_completes(
    orthanc, archive, tmp_path, monkeypatch
):
    """Instances are fetched as the batch reads them: the ones the server no longer
    delivers are failed rows naming it and why (before, the whole run stopped there), and
    the next run fetches just those."""
    from pipeline.io.dicomweb import DicomWebSource

    real, calls = DicomWebSource.retrieve, []

    def flaky(self, *args, **kwargs):
        calls.append(args)
        if len(calls) > 3:
            raise ConnectionError("connection refused")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DicomWebSource, "retrieve", flaky)
    out = tmp_path / "out"
    argv = ["segment", "dicomweb+" + orthanc["url"], "-o", str(out), "--no-progress"]
    assert main([*argv, "--workers", "0"]) == EXIT_FAILED
    rows = _rows(out)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(rows) == 8 and len(failed) == 5
    assert all(orthanc["url"] in r["reason"] for r in failed)
    assert all("connection refused" in r["reason"] for r in failed)
    fetched = []

    def counted(self, *args, **kwargs):
        fetched.append(args)
        return real(self, *args, **kwargs)

    # what a run killed between a row's journal line and its copy's removal leaves, and a
    # fetch's temporary: the rerun removes both
    def copy_of(r: dict) -> Path:
        study, series, sop = r["path"].split("/studies/")[1].split("/")[::2]
        return out / "dicomweb" / study / series / f"{sop}.dcm"

    done = next(r for r in rows if r["status"] != "failed")
    leftovers = [copy_of(done), copy_of(failed[0]).with_name(f".{copy_of(failed[0]).name}.x.tmp")]
    for leftover in leftovers:
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"left by a killed run")
    monkeypatch.setattr(DicomWebSource, "retrieve", counted)
    assert main([*argv, "--workers", "0"]) == EXIT_OK
    assert len(fetched) == 5  # the three finished before are not fetched again
    assert len(_rows(out)) == 8 and {r["status"] for r in _rows(out)} == {"ok", "skipped"}
    assert not any(leftover.exists() for leftover in leftovers)
    assert list((out / "dicomweb").rglob("*.dcm")) == []


def test_credentials_come_from_the_environment_never_the_command_line(tmp_path):
    from pipeline.io.dicomweb import DicomWebError, session_from_env

    assert session_from_env({"LUNGSEG_DICOMWEB_TOKEN": "s3cret"}).headers["Authorization"] == (
        "Bearer s3cret"
    )
    assert session_from_env(
        {"LUNGSEG_DICOMWEB_USER": "u", "LUNGSEG_DICOMWEB_PASSWORD": "p"}
    ).auth == (
        "u",
        "p",
    )
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"user": "a", "password": "b"}))
    assert session_from_env({"LUNGSEG_DICOMWEB_CREDENTIALS": str(creds)}).auth == ("a", "b")
    creds.write_text("{}")
    with pytest.raises(DicomWebError, match=r"creds\.json"):
        session_from_env({"LUNGSEG_DICOMWEB_CREDENTIALS": str(creds)})


def test_instances_are_fetched_a_bounded_few_ahead_of_the_batch(
    orthanc, archive, tmp_path, monkeypatch
):
    """Before, the worker decoding an instance fetched it first: a round trip of the
    server's in every image. Now threads fetch them ahead of the batch, at most ``depth``
    (2 at batch 1) and one per thread ahead of the images decoded."""
    import threading

    from pipeline.inference import segment
    from pipeline.io import dicomweb
    from pipeline.io.dicomweb import DicomWebSource

    real, decode = DicomWebSource.retrieve, segment.decode
    decoded, fetches = [], []

    def noted(self, *args, **kwargs):
        fetches.append((threading.current_thread().name, len(decoded)))
        return real(self, *args, **kwargs)

    def counted(*args, **kwargs):
        decoded.append(args[0])
        return decode(*args, **kwargs)

    monkeypatch.setattr(DicomWebSource, "retrieve", noted)
    monkeypatch.setattr(segment, "decode", counted)
    monkeypatch.setattr(dicomweb, "PREFETCH_THREADS", 1)
    out = tmp_path / "out"
    argv = ["segment", "dicomweb+" + orthanc["url"], "-o", str(out), "--no-progress"]
    assert main([*argv, "--workers", "0", "--batch-size", "1", "--formats", "mask"]) == EXIT_OK
    assert len(fetches) == 8 and all(name.startswith("lungseg-prefetch") for name, _ in fetches)
    ahead = 2 + 1 + 1  # depth, one per thread, and the one taken
    assert all(seen >= i - ahead for i, (_, seen) in enumerate(fetches)), fetches
    assert fetches[-1][1] >= 8 - ahead - 1 > 0  # not all before the first image decoded


def test_segs_are_stored_back_while_the_batch_runs(orthanc, archive, tmp_path, monkeypatch):
    """Before, every SEG was stored after the last image: a PACS saw no result of a long
    batch until its end, and none of a batch that stopped half-way."""
    from pipeline.inference.segment import Segmenter
    from pipeline.io import dicomweb
    from pipeline.io.dicomweb import DicomWebSource

    running, when = [False], []
    real_run, real_stow = Segmenter.run, DicomWebSource.stow

    def run(self, jobs):
        running[0] = True
        try:
            return real_run(self, jobs)
        finally:
            running[0] = False

    def stow(self, files, markers):
        when.append(running[0])
        return real_stow(self, files, markers)

    monkeypatch.setattr(Segmenter, "run", run)
    monkeypatch.setattr(DicomWebSource, "stow", stow)
    monkeypatch.setattr(dicomweb, "STOW_BATCH", 1)
    out = tmp_path / "out"
    argv = ["segment", "dicomweb+" + orthanc["url"], "-o", str(out), "--no-progress"]
    argv += ["--workers", "1", "--batch-size", "1", "--formats", "seg,mask", "--store-back"]
    assert main(argv) == EXIT_OK
    assert len(when) == 6 and any(when), when  # each SEG once; some while the batch ran
    assert len(_segs_in(orthanc)) == 6
    assert json.loads((out / "summary.json").read_text())["stored_back"] == 6


def test_a_failed_store_back_keeps_the_summary_and_a_rerun_stores_the_rest(
    orthanc, archive, tmp_path, monkeypatch
):
    """Before, a STOW-RS failure left no summary.json: the batch's counts were lost with it."""
    from pipeline.io import dicomweb
    from pipeline.io.dicomweb import DicomWebError, DicomWebSource

    real, calls = DicomWebSource.stow, []

    def flaky(self, files, markers):
        calls.append(len(files))
        if len(calls) == 2:
            raise DicomWebError(f"DICOMweb {self.url}: STOW-RS of 1 objects failed: reset")
        return real(self, files, markers)

    monkeypatch.setattr(DicomWebSource, "stow", flaky)
    monkeypatch.setattr(dicomweb, "STOW_BATCH", 1)
    monkeypatch.setattr(dicomweb, "STOW_REQUESTS", 1)
    out = tmp_path / "out"
    argv = ["segment", "dicomweb+" + orthanc["url"], "-o", str(out), "--no-progress"]
    argv += ["--workers", "1", "--formats", "seg,mask", "--store-back"]
    assert main(argv) == EXIT_FAILED
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["ok"] == 6 and "stored_back" not in summary
    assert orthanc["url"] in summary["store_back_error"] and "reset" in summary["store_back_error"]
    assert len(_segs_in(orthanc)) == 5
    monkeypatch.setattr(DicomWebSource, "stow", real)
    assert main(argv) == EXIT_OK
    assert json.loads((out / "summary.json").read_text())["stored_back"] == 1
    assert len(_segs_in(orthanc)) == 6
