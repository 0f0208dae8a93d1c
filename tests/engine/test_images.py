"""Photos read at their true brightness in every Pillow mode; IMAGE batches checked with a sentence."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from zoodip.images import load_folder, read_photo, rgb_batch, to_rgb_array


def _png_roundtrip(im: Image.Image, **save) -> Image.Image:
    b = io.BytesIO()
    im.save(b, "PNG", **save)
    b.seek(0)
    return Image.open(b)


def _grey16(value: int) -> np.ndarray:
    return np.full((6, 10), value, dtype=np.uint16)


# (what, a constructed image, the grey level every pixel must read as)
def _cases():
    half16 = Image.fromarray(_grey16(32768))
    palette = Image.new("P", (6, 6), 0)
    palette.putpalette([128, 128, 128] * 256)
    one_bit = Image.new("1", (6, 6), 1)
    return [
        ("I;16 (16-bit grey PNG) at half scale", _png_roundtrip(half16), 32768 / 65535),
        ("I;16B at half scale", Image.frombytes(
            "I;16B", (10, 6), _grey16(32768).astype(">u2").tobytes()), 32768 / 65535),
        ("I;16L at a quarter", Image.frombytes("I;16L", (10, 6), _grey16(16384).astype("<u2").tobytes()), 16384 / 65535),
        ("I (how older Pillow opens 16-bit PNG)", Image.fromarray(np.full((6, 10), 32768, np.int32), mode="I"), 32768 / 65535),
        ("F at 0.5", Image.fromarray(np.full((6, 10), 0.5, np.float32), mode="F"), 0.5),
        ("L", Image.new("L", (6, 6), 64), 64 / 255),
        ("1-bit white", one_bit, 1.0),
        ("P grey", palette, 128 / 255),
        ("CMYK half black", Image.new("CMYK", (6, 6), (0, 0, 0, 128)), 127 / 255),
        ("LAB mid lightness", Image.new("LAB", (6, 6), (128, 128, 128)), 119 / 255),
        ("YCbCr grey", Image.new("YCbCr", (6, 6), (100, 128, 128)), 100 / 255),
        ("RGBX", Image.new("RGBX", (6, 6), (30, 30, 30, 0)), 30 / 255),
        ("RGBA opaque", Image.new("RGBA", (6, 6), (40, 40, 40, 255)), 40 / 255),
        ("RGBA transparent: the background", Image.new("RGBA", (6, 6), (0, 0, 0, 0)), 1.0),
        ("LA opaque", Image.new("LA", (6, 6), (90, 255)), 90 / 255),
        ("LA half transparent", Image.new("LA", (6, 6), (0, 128)), 127 / 255),
        ("La premultiplied, opaque", Image.new("La", (6, 6), (90, 255)), 90 / 255),
        ("RGBa premultiplied, opaque", Image.new("RGBa", (6, 6), (70, 70, 70, 255)), 70 / 255),
        ("PA transparent", Image.new("PA", (6, 6), (0, 0)), 1.0),
    ]


CASES = _cases()


@pytest.mark.parametrize("what,im,grey", CASES, ids=[c[0] for c in CASES])
def test_every_mode_reads_at_its_true_brightness(what, im, grey):
    a = to_rgb_array(im)
    assert a.shape == (im.height, im.width, 3) and a.dtype == np.float32
    assert np.allclose(a, grey, atol=1.5 / 255), (what, float(a.min()), float(a.max()))


def test_palette_with_a_transparent_colour_shows_the_background():
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0] + [200, 10, 10] * 255)
    im.putpixel((0, 0), 1)
    im = _png_roundtrip(im, transparency=0)  # colour 0 (black) is transparent
    assert im.mode == "P" and "transparency" in im.info
    a = to_rgb_array(im)
    assert np.allclose(a[0, 0], [200 / 255, 10 / 255, 10 / 255], atol=1e-6)
    assert np.allclose(a[1:, 1:], 1.0)  # not black: the transparent pixels show white


def test_sixteen_bit_grey_file_keeps_its_gradient_and_precision(tmp_path):
    # a ramp over the whole 16-bit range: 8-bit clipping would read everything above 255 as white
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    with Image.open(tmp_path / "ramp.png") as im:
        assert im.mode.startswith("I")  # what Pillow gives: the case the old reader got wrong
    out = read_photo(tmp_path / "ramp.png", 64)
    assert out.shape == (64, 64, 3)
    assert out[:, 32].mean() == pytest.approx(ramp[0, 32] / 65535, abs=0.01)
    assert out[:, 0].max() < 0.02 and out[:, -1].min() > 0.98
    assert len(np.unique(out[0, :, 0])) > 60  # not quantised to a few levels


def test_float_and_32_bit_images_without_a_known_scale_are_skipped_with_the_reason(tmp_path, caplog):
    Image.fromarray(np.full((8, 8), 7.5, np.float32), mode="F").save(tmp_path / "hdr.tif")
    Image.fromarray(np.full((8, 8), 2**20, np.int32), mode="I").save(tmp_path / "wide.tif")
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "ok.png")
    with caplog.at_level(logging.WARNING, logger="zoodip"):
        images, names = load_folder(tmp_path, 64)
    assert names == ["ok.png"]
    assert "hdr.tif (a 32-bit float image with values 7.5..7.5 has no known brightness scale" in caplog.text
    assert "wide.tif (a 32-bit integer image with values 1.04858e+06..1.04858e+06" in caplog.text


def test_folder_with_every_mode_loads_one_batch(tmp_path):
    for i, (_, im, _) in enumerate(CASES):
        if im.mode in ("I;16B", "I;16L", "La", "RGBa", "PA", "LAB", "YCbCr", "RGBX", "CMYK", "F", "I"):
            continue  # not every mode has a file format; to_rgb_array covers them above
        im.save(tmp_path / f"{i:02d}.png")
    images, names = load_folder(tmp_path, 64)
    assert images.shape == (len(names), 64, 64, 3) and len(names) >= 8
    assert float(images.min()) >= 0 and float(images.max()) <= 1


def test_eight_bit_photos_read_exactly_as_before(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        w, h = im.size
        s = min(w, h)
        ref = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize(
            (64, 64), Image.Resampling.LANCZOS)
    assert np.array_equal(read_photo(tmp_path / "p.png", 64), np.asarray(ref, dtype=np.float32) / 255.0)


# --- IMAGE batches --------------------------------------------------------------------------------


def test_grey_and_alpha_image_batches_become_rgb():
    grey = torch.full((2, 8, 8, 1), 0.25)
    assert torch.equal(rgb_batch(grey), torch.full((2, 8, 8, 3), 0.25))
    rgba = torch.rand(1, 8, 8, 4)
    assert torch.equal(rgb_batch(rgba), rgba[..., :3])
    assert float(rgb_batch(torch.full((1, 8, 8, 3), 1.02)).max()) == 1.0  # an upscaler's overshoot


@pytest.mark.parametrize("images,words", [
    (torch.zeros(2, 64, 64), "images: shape (2, 64, 64) is a MASK, not an IMAGE"),
    (torch.zeros(64, 64), "is not an IMAGE, which is a batch"),
    (torch.zeros(0, 64, 64, 3), "the batch is empty"),
    (torch.zeros(1, 64, 64, 2), "2 channels per pixel"),
    (torch.zeros(1, 1, 1, 3), "1x1 pixels is too small; they must be at least 64x64"),
    (torch.zeros(1, 64, 32, 3), "32x64 pixels is too small"),
    (torch.zeros(1, 64, 64, 3, dtype=torch.uint8), "torch.uint8 values"),
    (torch.full((1, 64, 64, 3), float("nan")), "NaN or infinite"),
    (torch.full((1, 64, 64, 3), 255.0), "did not scale them"),
    ("not a tensor", "not an IMAGE"),
])
def test_bad_image_batches_are_refused_with_a_sentence(images, words):
    with pytest.raises(ValueError) as e:
        rgb_batch(images, "images", min_side=64)
    assert words in str(e.value)


def test_empty_and_mislabelled_files(tmp_path, caplog):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("a text file with an image's name")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "really-a-jpeg.png", format="JPEG")  # read by content
    with caplog.at_level(logging.WARNING, logger="zoodip"):
        images, names = load_folder(tmp_path, 64)
    assert names == ["really-a-jpeg.png"] and float(images[0, :, :, 2].mean()) > 0.9
    assert "skipped empty.png (" in caplog.text and "skipped notes.png (" in caplog.text


def test_a_decompression_bomb_is_skipped_with_the_reason(tmp_path, caplog):
    # a tiny file whose header claims 400 million pixels: Pillow refuses to decode it
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                                        + chunk(b"IEND", b""))
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    with caplog.at_level(logging.WARNING, logger="zoodip"):
        _, names = load_folder(tmp_path, 64)
    assert names == ["ok.png"]
    assert "skipped bomb.png (" in caplog.text and "decompression bomb" in caplog.text.lower()
