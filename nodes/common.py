"""Small helpers the node files share: host folders and run snapshots."""

from __future__ import annotations

import logging
from pathlib import Path

import folder_paths

from ..zoodip import embedding as emb_io
from ..zoodip.embedding import Embedding
from ..zoodip.files import atomic_write, check_name, inside

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
    ``step-<k>-2``, ``step-<k>-3``... Both files are written atomically (temp file + link), the
    state first: an embedding file whose state is missing is still usable, the reverse is not.
    """
    folder = runs_dir(embedding.name)
    for i in range(1, 10_000):
        path = folder / (f"step-{step}.safetensors" if i == 1 else f"step-{step}-{i}.safetensors")
        state = emb_io.state_path(path)
        if path.exists() or state.exists():
            continue
        wrote_state = False
        try:
            if embedding.state is not None:
                atomic_write(state, emb_io.state_to_bytes(embedding.state))
                wrote_state = True
            emb_io.save(embedding, path)
        except FileExistsError:  # another writer took the name between the check and the write
            if wrote_state:
                state.unlink(missing_ok=True)
            continue
        return path
    raise FileExistsError(f"no free snapshot name for step {step} in {folder}")


def snapshot_name(path: Path) -> str:
    """The name Load Embedding lists for a file in the embeddings folder (and embedding:<name> reads)."""
    return str(Path(path).resolve().relative_to(embeddings_dir().resolve()))
