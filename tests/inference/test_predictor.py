"""The one predictor: files and arrays, identity, and the bundle's TTA / ensemble options."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.inference.bundle import BUNDLE, config_sha256
from pipeline.inference.predictor import Predictor
from pipeline.training.data import load_split
from tests.conftest import dice, dice_where_decided, load_png


@pytest.fixture(scope="module")
def held_out(data_dir) -> list[dict]:
    return load_split(data_dir, "test", 4)


def _truth(case: dict) -> np.ndarray:
    return load_png(Path(case["label"])) > 127


def test_files_and_arrays_give_the_same_result_at_any_intensity_scale(shipped_model, held_out):
    from_files = list(shipped_model.predict_from_files([c["image"] for c in held_out], 3))
    for case, pred in zip(held_out, from_files, strict=True):
        pixels = load_png(Path(case["image"])).astype(np.float32)
        for scale in (1.0, 1 / 255, 16.0):  # 8-bit, [0, 1], 12-bit-like
            again = shipped_model.predict_single_npy_array(pixels * scale, keep_image=True)
            assert np.array_equal(again.mask, pred.mask)
            assert again.image.shape == pixels.shape
        assert pred.probability.shape == pred.mask.shape and pred.probability.dtype == np.float32
        # post-processing only removes blobs and fills holes after the threshold
        assert dice(pred.probability > 0.5, pred.mask) > 0.99
        assert dice_where_decided(pred.mask, _truth(case)) > 0.9
        m = pred.measures
        assert m.right_px + m.left_px == int(pred.mask.sum()) and not m.flags


def test_array_metadata_gives_spacing_and_sides(shipped_model, held_out):
    pixels = load_png(Path(held_out[0]["image"]))
    plain = shipped_model.predict_single_npy_array(pixels)
    assert np.isnan(plain.measures.mm2(1))
    flipped = shipped_model.predict_single_npy_array(
        pixels, {"pixel_spacing": (0.5, 0.5), "patient_orientation": "R\\F"}
    )
    assert flipped.measures.mm2(4) == pytest.approx(1.0)
    # columns towards the patient's right: the right lung is the one on the image's right
    assert np.array_equal(flipped.measures.right, plain.measures.left)


def test_bundle_preprocessing_runs_on_a_tensor_a_host_already_holds(held_out):
    """MONAI Deploy hands the bundle a tensor, not a path: the loader passes it through."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    pixels = torch.from_numpy(load_png(Path(held_out[0]["image"])).astype(np.float32))
    item = parser.get_parsed_content("loader")({"image": pixels[None]})
    out = parser.get_parsed_content("preprocessing")(item)["image"]
    assert tuple(out.shape) == (1, 256, 256) and 0 <= float(out.min()) < float(out.max()) <= 1


def test_a_bfloat16_identity_says_whether_the_network_ran_fused(shipped_model, monkeypatch):
    import dataclasses
    import hashlib

    from pipeline.networks import fusion

    ident = shipped_model.identity
    assert ident.numerics == ""  # float32: fused bit for bit, so the digest is as before
    parts = [*ident.checkpoints_sha256, ident.config_sha256, ident.precision]
    assert ident.digest == hashlib.sha256("|".join(parts).encode()).hexdigest()
    overrides = {"precision": "bfloat16"}
    bf16 = Predictor(device="cpu", overrides=overrides, network=False).identity
    assert bf16.numerics == ("bfloat16-fused" if fusion.bfloat16_fused("cpu") else "")
    assert (
        dataclasses.replace(bf16, numerics="").digest
        != dataclasses.replace(bf16, numerics="bfloat16-fused").digest
    )
    monkeypatch.setattr(fusion, "native_bfloat16", lambda: False)
    assert Predictor(device="cpu", overrides=overrides, network=False).identity.numerics == ""
    unfused = {**overrides, "network#fuse": False}
    assert Predictor(device="cpu", overrides=unfused, network=False).identity.numerics == ""


def test_identity_follows_every_pixel_setting_and_nothing_else(shipped_model):
    ident = shipped_model.identity
    assert len(ident.checkpoint_sha256) == 64 and ident.version
    assert ident.algorithm()["version"].endswith(ident.digest[:12])
    same = Predictor(device="cpu", overrides={"batch_size": 1, "num_workers": 3}, network=False)
    assert same.identity == ident
    for override in ({"threshold": 0.6}, {"tta": ["hflip"]}, {"lung_components": 1}):
        other = Predictor(device="cpu", overrides=override, network=False).identity
        assert other.config_sha256 != ident.config_sha256 and other.digest != ident.digest
    raw = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    moved = {**raw, "bundle_root": "/elsewhere", "dataset_dir": "/data", "device_name": "cuda"}
    assert config_sha256(moved) == config_sha256(raw)


def test_a_predictor_built_without_its_network_loads_it_later(shipped_model, held_out):
    """The batch job's order: pre- and post-processing first, the network while workers decode."""
    later = Predictor(device="cpu", network=False)
    item = later.preprocess(later.load(held_out[0]["image"]))
    with pytest.raises(RuntimeError, match="load_network"):
        later.forward([item["image"]])
    network = later.load_network()
    assert later.load_network() is network  # loaded once
    expected = shipped_model.forward([item["image"]])
    assert torch.equal(later.forward([item["image"]]), expected)


def test_unknown_override_is_refused_with_the_config_named():
    with pytest.raises(KeyError, match="thresold"):
        Predictor(device="cpu", overrides={"thresold": 0.4}, network=False)


@pytest.mark.parametrize("combine", ["ensemble", "soup"])
def test_one_checkpoint_combined_with_itself_gives_its_masks(shipped_model, held_out, combine):
    paths = [c["image"] for c in held_out]
    once = shipped_model  # one checkpoint
    overrides = {"ensemble": ["models/model.pt"], "combine": combine}
    twice = Predictor(device="cpu", overrides=overrides)
    assert twice.identity.checkpoints_sha256 == (once.identity.checkpoint_sha256,) * 2
    assert twice.identity.digest != once.identity.digest
    for a, b in zip(twice.predict_from_files(paths), once.predict_from_files(paths), strict=True):
        assert np.array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-4)


def test_test_time_flips_average_the_flipped_predictions(shipped_model, held_out):
    paths = [c["image"] for c in held_out]
    tta = Predictor(device="cpu", overrides={"tta": ["hflip"]})
    for a, b, case in zip(
        tta.predict_from_files(paths),
        shipped_model.predict_from_files(paths),
        held_out,
        strict=True,
    ):
        assert not np.allclose(a.probability, b.probability, atol=1e-3)  # the flip was run
        # a mirrored chest has its heart on the other side, where the anatomical model
        # outlines no lung behind it: the flipped view disagrees there (0.965 on these 4)
        assert dice(a.mask, b.mask) > 0.95 and dice_where_decided(a.mask, _truth(case)) > 0.9


def test_a_missing_checkpoint_is_named(tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", copy / "configs")
    with pytest.raises(FileNotFoundError, match=r"model\.pt"):
        Predictor(copy, device="cpu")


#: The post-processing on the original grid (0.3.0's): the reference for the coarse one.
FULL_RESOLUTION_POSTPROCESSING = [
    {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
    {"_target_": "pipeline.transforms.Unletterboxd", "keys": "pred", "ref_key": "image"},
    {"_target_": "CopyItemsd", "keys": "pred", "names": "prob"},
    {"_target_": "AsDiscreted", "keys": "pred", "threshold": "@threshold"},
    {
        "_target_": "KeepLargestConnectedComponentd",
        "keys": "pred",
        "applied_labels": [1],
        "is_onehot": False,
        "num_components": "@lung_components",
    },
    {"_target_": "FillHolesd", "keys": "pred", "applied_labels": [1]},
    {"_target_": "pipeline.inference.lungs.LungSidesd", "keys": "pred", "ref_key": "image"},
    {"_target_": "CopyItemsd", "keys": "pred", "names": "lungs_lowres"},
]


@pytest.fixture(scope="module")
def full_resolution_model() -> Predictor:
    """The shipped model decoding every pixel and post-processing on the original grid."""
    overrides = {
        "decode_min_size": None,
        "postprocessing#transforms": FULL_RESOLUTION_POSTPROCESSING,
    }
    return Predictor(device="cpu", overrides=overrides)


def test_coarse_post_processing_and_reduced_decoding_keep_the_masks(
    shipped_model, full_resolution_model, held_out, tmp_path
):
    from PIL import Image

    from pipeline.io.convert import DicomVariant, build_dicom, write_dicom

    pixels = load_png(Path(held_out[0]["image"]))
    big = np.asarray(Image.fromarray(pixels).resize((1800, 2048), Image.Resampling.BICUBIC))
    files = {
        "512 uncompressed": build_dicom(pixels, DicomVariant.MONO2_16BIT),
        "2048 x 1800 JPEG 2000": build_dicom(big, DicomVariant.JPEG2000, spacing_mm=0.17),
    }
    for name, ds in files.items():
        path = write_dicom(ds, tmp_path / f"{name}.dcm")
        fast = next(shipped_model.predict_from_files([path]))
        full = next(full_resolution_model.predict_from_files([path]))
        assert fast.mask.shape == full.mask.shape == ds.pixel_array.shape
        assert dice(fast.mask, full.mask) >= (1.0 if name.startswith("512") else 0.999), name
        assert dice(fast.measures.right, full.measures.right) >= 0.999
        assert fast.measures.components == full.measures.components == 2
        assert abs(fast.measures.confidence - full.measures.confidence) < 0.01
        assert fast.probability.shape == fast.mask.shape


def test_lung_field_chooses_the_model_and_the_anatomical_one_fills_the_heart_shadow(
    shipped_model, data_dir
):
    from pipeline.evaluation.lung_field import anatomical_references
    from pipeline.transforms.lung_field import retrocardiac_region

    visible = Predictor(device="cpu", overrides={"lung_field": "visible"})
    assert shipped_model.lung_field == "anatomical" and visible.lung_field == "visible"
    assert set(visible.identity.checkpoints_sha256).isdisjoint(
        shipped_model.identity.checkpoints_sha256
    )
    assert visible.identity.lung_field == "visible" != shipped_model.identity.lung_field
    # visible-convention test cases: the region behind the heart their masks leave out
    test_cases = load_split(data_dir, "test", 12)
    cases = [c for c in test_cases if c["name"] not in anatomical_references()][:6]
    claimed = {"anatomical": [], "visible": []}
    for model, field in ((shipped_model, "anatomical"), (visible, "visible")):
        preds = model.predict_from_files([c["image"] for c in cases])
        for case, pred in zip(cases, preds, strict=True):
            region = retrocardiac_region(_truth(case))
            claimed[field].append((pred.mask & region).sum() / region.sum())
            assert dice(pred.mask & ~region, _truth(case) & ~region) > 0.9
    assert np.mean(claimed["anatomical"]) > np.mean(claimed["visible"]) + 0.2


def test_unknown_lung_field_is_refused_with_the_allowed_ones():
    with pytest.raises(ValueError, match="'whole' is not one of: visible, anatomical"):
        Predictor(device="cpu", overrides={"lung_field": "whole"}, network=False)
