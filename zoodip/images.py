"""Training photos from a folder: EXIF-rotated, center-cropped, resized, as an (N, H, W, 3) batch."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("zoodip")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def load_folder(folder: Path, resolution: int = 512) -> tuple[torch.Tensor, list[str]]:
    """Every readable image in ``folder`` (sorted by name, not recursive) as float 0..1 BHWC.

    Non-images and unreadable files are skipped with a warning; an empty result is an error.
    """
    from PIL import Image, ImageOps  # Pillow ships with ComfyUI

    if resolution < 64 or resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8 and at least 64, got {resolution}")
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
            with Image.open(p) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                w, h = im.size
                s = min(w, h)
                left, top = (w - s) // 2, (h - s) // 2
                im = im.crop((left, top, left + s, top + s)).resize((resolution, resolution), Image.Resampling.LANCZOS)
                images.append(np.asarray(im, dtype=np.float32) / 255.0)
                names.append(p.name)
        except Exception as e:  # a broken file must not stop the others
            skipped.append(f"{p.name} ({e})")
    for s in skipped:
        log.warning("ZOODiP: skipped %s (not a readable image)", s)
    if not images:
        raise ValueError(f"no readable images in {folder}: put 3-5 photos (.png, .jpg, .webp) of the subject there")
    return torch.from_numpy(np.stack(images)), names
