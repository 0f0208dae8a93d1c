"""Save Embedding, Load Embedding, Apply Embedding."""

from __future__ import annotations

import logging
from pathlib import Path

import folder_paths

from ..zoodip import embedding as emb_io
from ..zoodip.files import check_name
from . import host
from .common import embedding_path, embeddings_dir

log = logging.getLogger("zoodip")


class ZOODiPSaveEmbedding:
    CATEGORY = "ZOODiP"
    DESCRIPTION = (
        "Saves a trained token to models/embeddings/<filename>.safetensors, where any prompt can use it "
        "as embedding:<filename>. Never replaces an existing file unless overwrite is on."
    )
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "embedding": ("EMBEDDING", {"tooltip": "The trained token (from ZOODiP Train Token or Load Embedding)."}),
                "filename": ("STRING", {"default": "", "tooltip": "File name without extension; empty uses the token's name. Letters, digits, - _ . only."}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace a file of the same name. Off: an existing file stops the save with an error."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename):
        if filename:
            try:
                embedding_path(filename)
            except ValueError as e:
                return str(e)
        return True

    def save(self, embedding, filename, overwrite):
        path = embedding_path(filename or embedding.name)
        state = embedding.state
        emb_io.save(embedding, path, overwrite=overwrite)
        if state is not None:  # for an exact resume later; the host does not list this file
            emb_io.atomic_write(emb_io.state_path(path), emb_io.state_to_bytes(state), overwrite=True)
        log.info("ZOODiP: saved %s", path)
        return {"ui": {"text": [f"saved {path.name}: use embedding:{path.stem} in a prompt"]}}


class ZOODiPLoadEmbedding:
    CATEGORY = "ZOODiP"
    DESCRIPTION = "Loads an embedding file from models/embeddings (and its training state, when one was saved beside it)."
    RETURN_TYPES = ("EMBEDDING",)
    RETURN_NAMES = ("embedding",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "embedding_name": (folder_paths.get_filename_list("embeddings"), {"tooltip": "A file in models/embeddings (safetensors, or A1111 .pt read safely)."}),
            }
        }

    def load(self, embedding_name):
        path = folder_paths.get_full_path("embeddings", embedding_name)
        if path is None:
            raise ValueError(f"{embedding_name} is not in the embeddings folder {embeddings_dir()}")
        emb = emb_io.load(Path(path))
        sp = emb_io.state_path(Path(path))
        if sp.exists():
            emb.state = emb_io.state_from_bytes(sp.read_bytes())
        return (emb,)


class ZOODiPApplyEmbedding:
    CATEGORY = "ZOODiP"
    DESCRIPTION = "Returns a copy of the CLIP that resolves embedding:<token_name> to this embedding, without saving a file."
    RETURN_TYPES = ("CLIP",)
    RETURN_NAMES = ("clip",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The CLIP to extend (it is not modified)."}),
                "embedding": ("EMBEDDING", {"tooltip": "The token vectors."}),
                "token_name": ("STRING", {"default": "", "tooltip": "The word to use as embedding:<token_name>; empty uses the embedding's own name."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, token_name):
        if token_name:
            try:
                check_name(token_name)
            except ValueError as e:
                return str(e)
        return True

    def apply(self, clip, embedding, token_name):
        name = check_name(token_name or embedding.name)
        return (host.apply_embedding(clip, embedding, name),)
