"""The batch job's worker steps: decoding, the wire format between processes, finishing."""

from __future__ import annotations

import pickle

import numpy as np

from pipeline.enums import OutputFormat
from pipeline.inference import workers
from pipeline.inference.outputs import Context
from pipeline.inference.workers import KeepImage, decode, from_wire, safe_finish, to_wire
from pipeline.io.convert import DicomVariant, build_dicom, write_dicom


def test_finishing_without_the_preprocessed_pixels_gives_the_same_outputs(
    shipped_model, pixels, tmp_path
):
    path = write_dicom(build_dicom(pixels, DicomVariant.MONO2_16BIT), tmp_path / "in.dcm")
    decoded = decode(path, False, KeepImage.UINT8, shipped_model)
    decoded["logits"] = shipped_model.forward([decoded["item"]["image"]])[0]
    full, lean = to_wire(decoded), to_wire(decoded, pixels=False)
    assert lean["item"]["image"].size == 0 and lean["item"]["image_meta"]
    assert len(pickle.dumps(lean)) < len(pickle.dumps(full)) - 200_000  # 256² float32 less
    rows = []
    for name, wire in (("full", full), ("lean", lean)):
        ctx = Context(tmp_path / name, (OutputFormat.MASK,), shipped_model.identity, "20260101")
        row, _ = safe_finish(path, path.relative_to(tmp_path), from_wire(wire), ctx, shipped_model)
        rows.append(row)
        assert row["status"] == "ok", row
    assert rows[0]["right_area_px"] == rows[1]["right_area_px"] > 0
    assert rows[0]["left_area_px"] == rows[1]["left_area_px"] > 0
    masks = [(tmp_path / n / "masks" / "in.png").read_bytes() for n in ("full", "lean")]
    assert masks[0] == masks[1]
    assert np.asarray(from_wire(lean)["item"]["image"]).shape == (1, 0, 0)


def test_a_worker_trims_its_heap_every_few_large_images_not_after_each(
    shipped_model, pixels, tmp_path, monkeypatch
):
    """Each trim made the next image fault its pages in again (~5-7 ms at 2048²)."""
    trims = []
    monkeypatch.setattr(workers, "release_memory", lambda: trims.append(1))
    monkeypatch.setattr(workers, "LARGE_IMAGE", pixels.size)  # this image counts as large
    monkeypatch.setattr(workers, "_WORKER", {"predictor": shipped_model})
    path = write_dicom(build_dicom(pixels, DicomVariant.MONO2_16BIT), tmp_path / "in.dcm")
    for _ in range(workers.TRIM_EVERY - 1):
        workers.decode_in_worker(path, False, KeepImage.NONE)
    assert trims == []
    workers.decode_in_worker(path, False, KeepImage.NONE)
    assert trims == [1]
    monkeypatch.setattr(workers, "LARGE_IMAGE", pixels.size + 1)  # small: never counted
    for _ in range(2 * workers.TRIM_EVERY):
        workers.decode_in_worker(path, False, KeepImage.NONE)
    assert trims == [1]


def test_pixels_that_fit_go_to_the_slot_and_the_rest_through_the_pipe():
    from pipeline.inference.slots import SlotRef, Slots
    from pipeline.inference.workers import stash_pixels

    slots = Slots(2, size=300_000)
    image = np.random.default_rng(0).random((1, 256, 256), dtype=np.float32)  # 262 KB
    small, large = np.ones((100, 100), np.uint8), np.ones((256, 256), np.uint8)
    wire = {"item": {"image": image, "image_meta": {}}, "original": small, "stages": {}}
    out = stash_pixels(wire, slots, 1)
    assert isinstance(out["item"]["image"], SlotRef) and isinstance(out["original"], SlotRef)
    assert np.array_equal(slots.get(out["item"]["image"]), image)
    assert np.array_equal(slots.get(out["original"]), small)
    assert out["original"].offset >= slots.end_of(out["item"]["image"])  # after the input
    out = stash_pixels({**wire, "original": large}, slots, 0)  # would end past the slot
    assert isinstance(out["item"]["image"], SlotRef) and out["original"] is large
    assert wire["item"]["image"] is image  # the wire itself is left as it was


def test_lower_thread_priority_lowers_the_calling_thread_only():
    """The DICOMweb prefetch threads yield to the network as the workers do; the batch
    job's own threads (the network's) keep their priority."""
    import os
    import sys
    import threading

    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("nice is per thread on Linux only; elsewhere the thread keeps its own")
    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = {}

    def lowered() -> None:
        me = threading.get_native_id()
        seen["before"] = os.getpriority(os.PRIO_PROCESS, me)
        workers.lower_thread_priority()
        seen["after"] = os.getpriority(os.PRIO_PROCESS, me)

    thread = threading.Thread(target=lowered)
    thread.start()
    thread.join()
    assert seen["after"] == min(19, seen["before"] + workers.WORKER_NICENESS)
    assert seen["after"] > seen["before"] or seen["before"] == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before
