"""Small helpers the node files share: host folders, run snapshots, link checks, images shown in a node."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import folder_paths
from PIL import Image

from ..zoodip import embedding as emb_io
from ..zoodip.embedding import Embedding
from ..zoodip.files import check_name, inside
from ..zoodip.settings import PUTSConfig, SubspaceConfig

log = logging.getLogger("zoodip")

RUNS_DIR = "zoodip-runs"


def embeddings_dir() -> Path:
    """The first embeddings folder the host knows: where its ``embedding:`` loader looks."""
    dirs = folder_paths.get_folder_paths("embeddings")
    if not dirs:
        raise RuntimeError("the host has no embeddings folder configured (models/embeddings)")
    return Path(dirs[0])


def embedding_path(filename: str) -> Path:
    name = filename[: -len(".safetensors")] if filename.endswith(".safetensors") else filename
    check_name(name, "filename")
    base = embeddings_dir()
    path = base / f"{name}.safetensors"
    if not inside(base, path):
        raise ValueError(f"filename {filename!r} would write outside the embeddings folder")
    return path


def own_name(embedding: Embedding, field: str) -> str:
    """The embedding's own name (from its file or its token), used when ``field`` is left empty."""
    try:
        return check_name(embedding.name, "name")
    except ValueError as e:
        raise ValueError(
            f"{field} is empty, and the embedding's own name cannot be used: {e}. Type a {field}"
        ) from None


def own_name_path(embedding: Embedding) -> Path:
    return embedding_path(own_name(embedding, "filename"))


def runs_dir(token_name: str) -> Path:
    """``<embeddings>/zoodip-runs/<token_name>``: where a run's snapshots go."""
    base = embeddings_dir()
    folder = base / RUNS_DIR / check_name(token_name, "token_name")
    if not inside(base, folder):
        raise ValueError(f"{folder} is not inside the embeddings folder {base} (is {RUNS_DIR} a link elsewhere?)")
    return folder


def save_snapshot(embedding: Embedding, step: int) -> Path:
    """``zoodip-runs/<token>/step-<k>.safetensors`` plus its training state; never replaces a file.

    A name that is taken (an earlier run of the same token reached the same step) gets a suffix:
    ``step-<k>-2``, ``step-<k>-3``... The pair is written as one unit (both files or neither), each
    atomically (temp file + link).
    """
    folder = runs_dir(embedding.name)
    for i in range(1, 10_000):
        path = folder / (f"step-{step}.safetensors" if i == 1 else f"step-{step}-{i}.safetensors")
        if path.exists() or emb_io.state_path(path).exists():
            continue
        try:
            emb_io.save_with_state(embedding, path, state_overwrite=False)
        except FileExistsError:  # another writer took the name between the check and the write
            continue
        return path
    raise FileExistsError(f"no free snapshot name for step {step} in {folder}")


def check_saves_before_training(prompt: dict[str, Any] | None, node_id: str | None, token_name: str) -> None:
    """Refuse, before training, a run whose token a Save Embedding in the same prompt could not save.

    Save Embedding refuses an existing file (without overwrite) only when it runs, after the whole
    training; the prompt (the host's hidden PROMPT input) shows which Save nodes take this node's
    embedding, so their target is checked here, before any expensive work. Only literal values are
    judged: a linked filename or overwrite is checked by Save itself.
    """
    if not isinstance(prompt, dict) or node_id is None:
        return
    for save_id, node in prompt.items():
        if not isinstance(node, dict) or node.get("class_type") != "ZOODiPSaveEmbedding":
            continue
        inputs = node.get("inputs") or {}
        link = inputs.get("embedding")
        if not (isinstance(link, list) and len(link) == 2 and str(link[0]) == str(node_id) and link[1] == 1):
            continue
        filename, overwrite = inputs.get("filename", ""), inputs.get("overwrite", False)
        if not isinstance(filename, str) or not isinstance(overwrite, bool) or overwrite:
            continue
        try:
            path = embedding_path(filename or token_name)
        except ValueError as e:  # the host runs this node even when Save failed validation
            raise ValueError(f"Save Embedding (node {save_id}): {e}; fix it there (checked before training, so none is "
                             "wasted)") from None
        if path.exists():
            raise FileExistsError(
                f"{path} already exists, so Save Embedding (node {save_id}) would refuse it after training: choose "
                "another filename there, or turn its overwrite on (checked before training, so none is wasted)"
            )


# what each link type must look like, and where it usually comes from
_LINK_TYPES = {
    "MODEL": (lambda v: hasattr(v, "get_model_object") and hasattr(v, "model"), "your checkpoint loader"),
    "CLIP": (lambda v: hasattr(v, "tokenize") and hasattr(v, "cond_stage_model"), "your checkpoint loader"),
    "VAE": (lambda v: hasattr(v, "encode") and hasattr(v, "decode"), "your checkpoint loader"),
    "EMBEDDING": (lambda v: isinstance(v, Embedding), "ZOODiP Train Token or Load Embedding"),
    "ZOODIP_PUTS": (lambda v: isinstance(v, PUTSConfig), "PUTS Sampler Config"),
    "ZOODIP_SUBSPACE": (lambda v: isinstance(v, SubspaceConfig), "Subspace Projector"),
    "ZOODIP_LOSS": (lambda v: hasattr(v, "loss") and hasattr(v, "held_out"), "ZOODiP Train Token"),
}


def check_links(**inputs: tuple[object, str]) -> None:
    """Refuse a value that is not the linked type an input needs: ``name=(value, "MODEL")``.

    The host does not check the values an API client writes in place of a link (a string where a
    MODEL should be passes validation), so the node says what to connect instead of failing deep
    inside with an AttributeError.
    """
    for name, (value, kind) in inputs.items():
        if value is None:
            continue
        ok, source = _LINK_TYPES[kind]
        if not ok(value):
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            article = "an" if kind[0] in "AEIOU" else "a"
            raise ValueError(f"{name}: got {type(value).__name__} {shown}, not {article} {kind}: connect the output of "
                             f"{source}")


def snapshot_name(path: Path) -> str:
    """The name Load Embedding lists for a file in the embeddings folder (and embedding:<name> reads)."""
    return str(Path(path).resolve().relative_to(embeddings_dir().resolve()))


def temp_image(image: Image.Image, prefix: str) -> dict[str, str]:
    """``image`` saved in the temp folder, as PreviewImage shows images in a node: the ``ui`` entry the UI fetches."""
    prefix += "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))  # as PreviewImage does
    full, name, counter, sub, _ = folder_paths.get_save_image_path(prefix, folder_paths.get_temp_directory(),
                                                                    image.width, image.height)
    file = f"{name}_{counter:05}_.png"
    image.save(os.path.join(full, file))
    return {"filename": file, "subfolder": sub, "type": "temp"}
