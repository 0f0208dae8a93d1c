"""Load Training Images: a folder of photos under the host's input directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..zoodip.files import inside
from ..zoodip.images import load_folder
from .schema import Choice, legacy, widget


def _input_dir() -> Path:
    return Path(folder_paths.get_input_directory())


def _subfolders() -> list[str]:
    base = _input_dir()
    if not base.is_dir():
        return []
    out = []
    for root, dirs, _ in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for d in dirs:
            out.append(str((Path(root) / d).relative_to(base)).replace(os.sep, "/"))
    return out


class ZOODiPLoadImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ZOODiPLoadImages",
            display_name="Load Training Images",
            category="ZOODiP",
            description=(
                "Loads every photo in a folder under ComfyUI's input directory as a training batch: EXIF "
                "rotation applied, center-cropped to a square, resized. Non-images are skipped with a warning."
            ),
            inputs=[
                Choice("folder", options=_subfolders(), tooltip="A subfolder of ComfyUI/input holding 3-5 photos of the subject (png, jpg, webp, bmp, tif, gif)."),
                widget("resolution"),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def _path(cls, folder: str) -> Path:
        base = _input_dir()
        path = base / folder
        if not folder or not inside(base, path) or not path.is_dir():
            raise ValueError(f"{folder!r} is not a folder under the input directory {base}")
        return path

    @classmethod
    def fingerprint_inputs(cls, folder, resolution):
        # re-run when a photo is added, removed or replaced
        try:
            path = cls._path(folder)
        except ValueError:
            return float("nan")
        h = hashlib.sha256(str(resolution).encode())
        for p in sorted(path.iterdir()):
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()

    @classmethod
    def load(cls, folder, resolution):  # 0.1.0's method, for scripts that call the node directly
        return legacy(cls.execute(folder, resolution))

    @classmethod
    def execute(cls, folder, resolution) -> io.NodeOutput:
        images, _ = load_folder(cls._path(folder), resolution)
        return io.NodeOutput(images)
