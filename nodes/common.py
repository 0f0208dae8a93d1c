"""Small helpers the node files share: host folders and run snapshots."""

from __future__ import annotations

import logging
from pathlib import Path

import folder_paths

from ..zoodip import embedding as emb_io
from ..zoodip.embedding import Embedding
from ..zoodip.files import check_name, inside

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


def save_snapshot(embedding: Embedding, step: int) -> Path:
    """``zoodip-runs/<token>/step-<k>.safetensors`` plus its training state; never replaces a file."""
    base = embeddings_dir()
    folder = base / RUNS_DIR / check_name(embedding.name, "token_name")
    path = folder / f"step-{step}.safetensors"
    i = 1
    while path.exists() or emb_io.state_path(path).exists():
        i += 1
        path = folder / f"step-{step}-{i}.safetensors"
    if embedding.state is not None:
        # state first: an embedding file without its state is still usable, the reverse is not
        from ..zoodip.files import atomic_write

        atomic_write(emb_io.state_path(path), emb_io.state_to_bytes(embedding.state))
    emb_io.save(embedding, path)
    return path
