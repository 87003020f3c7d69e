"""Which files the bundle's inference picks up, and how outputs are named."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from pipeline.inference.datalist import image_datalist
from pipeline.inference.outputs import SaveMaskd, mask_to_uint8
from pipeline.io.convert import DicomVariant, dicomize
from tests.conftest import load_png


def test_datalist_keeps_images_and_names_what_it_leaves_out(tmp_path, data_dir, caplog):
    shutil.copy(data_dir / "images" / "MCUCXR_0104_1.png", tmp_path / "a.png")
    dicomize([data_dir / "images" / "CHNCXR_0001_0.png"], tmp_path / "nested", [DicomVariant.RLE])
    (tmp_path / "nested" / "notes.txt").write_text("hello")
    (tmp_path / "empty.png").write_bytes(b"")
    items = image_datalist(tmp_path)
    assert [i["relative"] for i in items] == ["a.png", "nested/rle/CHNCXR_0001_0.dcm"]
    assert "empty.png: file is empty" in caplog.text and "notes.txt: not an image" in caplog.text


def test_datalist_of_a_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="no images found in"):
        image_datalist(tmp_path)


def test_save_maskd_mirrors_the_input_tree(tmp_path, lung_mask):
    mask = torch.from_numpy(lung_mask[None].astype(np.float32))
    out = SaveMaskd("pred", tmp_path)({"pred": mask, "relative": "sub/case.dcm"})
    assert out["pred_path"] == str(tmp_path / "sub" / "case.png")
    written = load_png(tmp_path / "sub" / "case.png")
    assert written.shape == lung_mask.shape and np.array_equal(written > 127, lung_mask)


def test_mask_to_uint8_refuses_several_channels():
    with pytest.raises(ValueError, match=r"one-channel 2D mask, got shape \(2, 4, 4\)"):
        mask_to_uint8(np.zeros((2, 4, 4)))
