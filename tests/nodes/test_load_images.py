"""Load Training Images: EXIF rotation, center crop, resize, non-images skipped."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image


def _node():
    import nodes

    return nodes.NODE_CLASS_MAPPINGS["ZOODiPLoadImages"]()


def test_crop_resize_exif_and_skip(host, caplog):
    folder = host.input_dir / "mixed"
    folder.mkdir(exist_ok=True)
    # landscape 120x80: left third red, middle green, right third blue -> the square crop is green-centred
    im = Image.new("RGB", (120, 80), (0, 255, 0))
    im.paste((255, 0, 0), (0, 0, 20, 80))
    im.paste((0, 0, 255), (100, 0, 120, 80))
    im.save(folder / "a.png")
    # a portrait photo stored sideways: EXIF orientation 6 means "rotate 90 degrees clockwise to view"
    side = Image.new("RGB", (80, 40), (255, 255, 255))
    side.paste((0, 0, 0), (0, 0, 40, 40))  # stored left half black
    exif = Image.Exif()
    exif[0x0112] = 6
    side.save(folder / "b.jpg", exif=exif, quality=95)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"not really a png")
    with caplog.at_level(logging.WARNING):
        images = _node().load("mixed", 64)[0]
    assert images.shape == (2, 64, 64, 3) and images.dtype == torch.float32
    a = images[0]
    assert a[:, :, 1].mean() > 0.95 and a[:, :, 0].max() < 0.05  # only the green centre survives the crop
    b = images[1]
    # after rotation the photo is 40 wide x 80 tall with the black half on top; the crop keeps the middle
    assert b[:8].mean() < 0.1 and b[-8:].mean() > 0.9
    skipped = " ".join(r.getMessage() for r in caplog.records)
    assert "notes.txt" in skipped and "broken.png" in skipped


def test_folder_outside_input_is_refused(host):
    with pytest.raises(ValueError, match="not a folder under the input directory"):
        _node().load("../models", 64)


def test_folder_linked_outside_input_is_refused(host, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (64, 64)).save(outside / "a.png")
    (host.input_dir / "linked-out").symlink_to(outside, target_is_directory=True)
    try:
        with pytest.raises(ValueError, match="'linked-out' is not a folder under the input directory"):
            _node().load("linked-out", 64)
    finally:
        (host.input_dir / "linked-out").unlink()


def test_listed_folders_are_subfolders_of_input(host):
    (host.input_dir / "listed").mkdir(exist_ok=True)
    assert "listed" in _node().INPUT_TYPES()["required"]["folder"][0]
