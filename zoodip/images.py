"""Training photos: read at their true brightness whatever Pillow mode they open in, and IMAGE
batches checked before any model sees them.

Pillow's own conversion is right for the 8-bit modes (1, L, P, RGB, CMYK including Adobe's
inverted JPEGs, YCbCr, LAB, HSV, RGBX) and is used for them. It is wrong for three kinds of photo,
which are handled here:
- 16-bit and 32-bit integer grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, ``I``; a 16-bit PNG
  opens as one of these): ``convert("RGB")`` clips every value above 255, so mid-grey reads as
  white. They are scaled by their bit depth (65535) instead.
- 32-bit float grey (``F``): ``convert`` reads 0..1 as 0..1 out of 255, i.e. black. Values in
  0..1 are taken as they are; any other range has no known scale and the file is skipped.
- transparency (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``, or ``P``/``L``/``RGB`` with a
  transparent colour): ``convert("RGB")`` drops alpha and shows whatever colour the invisible
  pixels hold (often black). They are composited over white, as a cut-out subject is usually seen.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .settings import SETTINGS, check

log = logging.getLogger("zoodip")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
MIN_SIDE = 64  # a latent of 8x8: the smallest the UNet's three downsamplings handle
BACKGROUND = (255, 255, 255)  # what shows through transparent pixels

_HIGH_BIT_INT = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0}
_ALPHA = {"RGBA", "LA", "PA", "La", "RGBa"}


class UnreadablePhoto(ValueError):
    """A photo whose pixels cannot be read at a known brightness (the folder loader skips it)."""


def to_rgb_array(im) -> np.ndarray:
    """A PIL image -> (H, W, 3) float32 in 0..1 at its true brightness (see the module docstring)."""
    from PIL import Image

    mode = im.mode
    if mode in _HIGH_BIT_INT:
        a = np.asarray(im).astype(np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0 or hi > 65535:
            raise UnreadablePhoto(
                f"a 32-bit integer image with values {lo:g}..{hi:g} has no known brightness scale: "
                "save it as an 8- or 16-bit PNG or JPEG"
            )
        grey = (a / _HIGH_BIT_INT[mode]).astype(np.float32)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im).astype(np.float32)
        finite = bool(np.isfinite(a).all())
        lo, hi = (float(a.min()), float(a.max())) if a.size and finite else (0.0, 0.0)
        if not finite or lo < 0 or hi > 1:
            what = "NaN or infinite values" if not finite else f"values {lo:g}..{hi:g}"
            raise UnreadablePhoto(
                f"a 32-bit float image with {what} has no known brightness scale (0..1 is read as is): "
                "save it as an 8- or 16-bit PNG or JPEG"
            )
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode in _ALPHA or "transparency" in im.info:
        if mode == "La":  # premultiplied grey: Pillow converts it only to LA
            im = im.convert("LA")
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba)
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def square_resize(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """Center-crop (H, W, 3) float 0..1 to a square and resize it (Lanczos), float32 0..1."""
    from PIL import Image

    h, w = pixels.shape[:2]
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    crop = pixels[top : top + s, left : left + s]
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(crop[:, :, c]), mode="F").resize(
            (resolution, resolution), Image.Resampling.LANCZOS), dtype=np.float32)
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=2), 0.0, 1.0)


def read_photo(path: Path, resolution: int) -> np.ndarray:
    """One photo file -> (resolution, resolution, 3) float32 0..1: EXIF-rotated, square, resized."""
    from PIL import Image, ImageOps  # Pillow ships with ComfyUI

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.width < 1 or im.height < 1:
            raise UnreadablePhoto("it has no pixels")
        if im.mode in ("1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX") and "transparency" not in im.info:
            # 8-bit photos: Pillow's conversion is right; crop and resize in 8 bits, as before
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s)).resize((resolution, resolution), Image.Resampling.LANCZOS)
            return np.asarray(im, dtype=np.float32) / 255.0
        return square_resize(to_rgb_array(im), resolution)


def load_folder(folder: Path, resolution: int = SETTINGS["resolution"].default) -> tuple[torch.Tensor, list[str]]:
    """Every readable image in ``folder`` (sorted by name, not recursive) as float 0..1 BHWC.

    Non-images and unreadable files are skipped with a warning; an empty result is an error.
    """
    resolution = check("resolution", resolution)  # the declared limit and its one message
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    images, names, skipped = [], [], []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(p.name)
            continue
        try:
            images.append(read_photo(p, resolution))
            names.append(p.name)
        except Exception as e:  # a broken file must not stop the others
            skipped.append(f"{p.name} ({e})")
    for s in skipped:
        log.warning("ZOODiP: skipped %s (not a readable image)", s)
    if not images:
        raise ValueError(f"no readable images in {folder}: put 3-5 photos (.png, .jpg, .webp) of the subject there")
    return torch.from_numpy(np.stack(images)), names


def rgb_batch(images, what: str = "images", min_side: int = 1) -> torch.Tensor:
    """A ComfyUI IMAGE (B, H, W, C) as float RGB in 0..1, or a ValueError that says what to connect.

    ``what`` names the input in messages. Grey (C=1) is repeated to RGB and alpha (C=4) dropped, as
    the host's own nodes treat them; values slightly outside 0..1 (some upscalers overshoot) are clamped.
    """
    if not torch.is_tensor(images):
        raise ValueError(f"{what}: got a {type(images).__name__}, not an IMAGE: connect an image output such as Load Image")
    shape = tuple(images.shape)
    if images.ndim == 3:
        raise ValueError(
            f"{what}: shape {shape} is a MASK, not an IMAGE: connect an image (Load Image, Load Training Images), "
            "or turn the mask into one with Convert Mask to Image"
        )
    if images.ndim != 4:
        raise ValueError(f"{what}: shape {shape} is not an IMAGE, which is a batch (count, height, width, 3)")
    if shape[0] == 0:
        raise ValueError(f"{what}: the batch is empty: connect at least one image")
    if shape[3] not in (1, 3, 4):
        raise ValueError(f"{what}: {shape[3]} channels per pixel (shape {shape}); an IMAGE has 3 (RGB)")
    if shape[1] < min_side or shape[2] < min_side:
        raise ValueError(
            f"{what}: {shape[2]}x{shape[1]} pixels is too small; they must be at least {min_side}x{min_side} "
            "(Load Training Images resizes photos for you, resolution 512)"
        )
    if not images.is_floating_point():
        raise ValueError(f"{what}: {images.dtype} values; an IMAGE holds floats 0..1")
    images = images.float()
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{what}: NaN or infinite pixel values; check the node that made them")
    lo, hi = float(images.min()), float(images.max())
    if lo < -0.5 or hi > 2.0:
        raise ValueError(
            f"{what}: values {lo:.4g}..{hi:.4g}; an IMAGE holds 0..1 (values up to 255 mean the node that made "
            "them did not scale them)"
        )
    if shape[3] == 1:
        images = images.expand(-1, -1, -1, 3)
    elif shape[3] == 4:
        images = images[..., :3]
    return images.clamp(0.0, 1.0).contiguous()
