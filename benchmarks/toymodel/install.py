"""Put the toy checkpoint and the held-out concept's photos where the toy workflow looks for them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from . import data

CKPT = "zoodip-toy-shapes.safetensors"


def folder(held_out: tuple[str, str] = data.HELD_OUT) -> str:
    """The photos' folder under the host's input/ (the shipped workflow's: toy-purple-cross)."""
    return f"toy-{held_out[0]}-{held_out[1]}"


def checkpoint(path: Path, comfyui: Path, held_out: tuple[str, str] | None = None,
               say: Callable[[str], None] = print) -> Path:
    """Copy the checkpoint to <comfyui>/models/checkpoints/ (atomically) and write the photos."""
    dest = comfyui / "models" / "checkpoints" / CKPT
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(path, tmp)
    os.replace(tmp, dest)
    say(f"installed {dest}")
    photos(comfyui, held_out, say)
    return dest


def photos(comfyui: Path, held_out: tuple[str, str] | None = None, say: Callable[[str], None] = print) -> Path:
    """4 photos (64 px) of the held-out concept in <comfyui>/input/<folder(held_out)>/."""
    from PIL import Image

    held_out = held_out or data.HELD_OUT
    out = comfyui / "input" / folder(held_out)
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(data.make_set(4, 64, 2000, concepts=(held_out,)).images):
        Image.fromarray(img).save(out / f"{i:02d}.png")
    say(f"wrote 4 photos of the held-out concept ({' '.join(held_out)}) to {out}")
    return out
