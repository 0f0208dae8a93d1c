"""Save Embedding, Load Embedding, Apply Embedding."""

from __future__ import annotations

import logging
from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io

from ..zoodip import embedding as emb_io
from ..zoodip.files import check_name
from ..zoodip.trainer import check_state
from . import host
from .common import check_links, embedding_path, embeddings_dir, own_name, own_name_path
from .schema import Choice, Embedding, legacy

log = logging.getLogger("zoodip")


class ZOODiPSaveEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ZOODiPSaveEmbedding",
            display_name="Save Embedding",
            category="ZOODiP",
            description=(
                "Saves a trained token to models/embeddings/<filename>.safetensors, where any prompt can use it "
                "as embedding:<filename>. Never replaces an existing file unless overwrite is on."
            ),
            inputs=[
                Embedding.Input("embedding", tooltip="The token, from ZOODiP Train Token (or Load Embedding, to copy one under a new name)."),
                io.String.Input("filename", default="", tooltip="File name without extension; empty uses the token's own name, so embedding:<token_name> works right away. Letters, digits, - _ . only."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace a file of the same name. Off by default so that a second run never destroys a token you kept: an existing file stops the save with an error."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename):
        if filename:
            try:
                embedding_path(filename)
            except ValueError as e:
                return str(e)
        return True

    @classmethod
    def save(cls, embedding, filename, overwrite):  # 0.1.0's method, for scripts that call the node directly
        return legacy(cls.execute(embedding, filename, overwrite))

    @classmethod
    def execute(cls, embedding, filename, overwrite) -> io.NodeOutput:
        check_links(embedding=(embedding, "EMBEDDING"))
        path = embedding_path(filename) if filename else own_name_path(embedding)
        # the embedding and its state (for an exact resume later; the host does not list it): both or neither
        emb_io.save_with_state(embedding, path, overwrite=overwrite)
        log.info("ZOODiP: saved %s", path)
        return io.NodeOutput(ui={"text": [f"saved {path.name}: use embedding:{path.stem} in a prompt"]})


class ZOODiPLoadEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ZOODiPLoadEmbedding",
            display_name="Load Embedding",
            category="ZOODiP",
            description=(
                "Loads an embedding file from models/embeddings, including the snapshots under zoodip-runs/ that "
                "save_every and Cancel write, with its training state when one was saved beside it (for an exact resume)."
            ),
            inputs=[
                # the host's list walks subfolders, so zoodip-runs/<token>/step-<k>.safetensors is in it;
                # .zoodip-state files are not (not a model extension)
                Choice("embedding_name", options=folder_paths.get_filename_list("embeddings"), tooltip="A file in models/embeddings (safetensors, or A1111 .pt read safely); zoodip-runs/ holds the snapshots of training runs."),
            ],
            outputs=[Embedding.Output(display_name="embedding")],
        )

    @classmethod
    def fingerprint_inputs(cls, embedding_name):
        # load again when the file or its state is replaced under the same name
        path = folder_paths.get_full_path("embeddings", embedding_name)
        if path is None:
            return ""
        parts = []
        for p in (Path(path), emb_io.state_path(Path(path))):
            try:
                st = p.stat()
                parts.append(f"{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                parts.append("-")
        return "|".join(parts)

    @classmethod
    def load(cls, embedding_name):  # 0.1.0's method, for scripts that call the node directly
        return legacy(cls.execute(embedding_name))

    @classmethod
    def execute(cls, embedding_name) -> io.NodeOutput:
        path = folder_paths.get_full_path("embeddings", embedding_name)
        if path is None:
            raise ValueError(f"{embedding_name} is not in the embeddings folder {embeddings_dir()}")
        emb = emb_io.load(Path(path))
        emb.state = read_state(emb, emb_io.state_path(Path(path)))
        return io.NodeOutput(emb)


def read_state(emb: emb_io.Embedding, sp: Path) -> dict | None:
    """The training state saved beside an embedding, if it is there, readable and for these vectors.

    A broken or mismatched state only costs the exact resume (a warning), never the embedding.
    """
    if not sp.is_file():
        return None
    try:
        state = emb_io.state_from_bytes(sp.read_bytes())
        theta = state.get("theta") if isinstance(state, dict) else None
        vectors = torch.cat([v.float() for v in emb.vectors.values()], dim=-1)
        if not torch.is_tensor(theta) or theta.shape != vectors.shape or not torch.equal(theta.float(), vectors):
            log.warning("ZOODiP: %s does not belong to the vectors in the embedding file (replaced?); ignored", sp.name)
            return None
        check_state(state, tuple(vectors.shape))
    except Exception as e:  # a damaged file: the embedding still loads
        log.warning("ZOODiP: the training state %s cannot be used (%s); loading the embedding without it (a resume "
                    "restarts from its vectors at step 0)", sp.name, e)
        return None
    return state


class ZOODiPApplyEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ZOODiPApplyEmbedding",
            display_name="Apply Embedding",
            category="ZOODiP",
            description="Returns a copy of the CLIP that resolves embedding:<token_name> to this embedding, without saving a file.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP to extend (it is not modified)."),
                Embedding.Input("embedding", tooltip="The token vectors."),
                io.String.Input("token_name", default="", tooltip="The word to use as embedding:<token_name> in prompts; empty uses the embedding's own name, which is what Save Embedding would have saved it as."),
            ],
            outputs=[io.Clip.Output(display_name="clip")],
        )

    @classmethod
    def validate_inputs(cls, token_name):
        if token_name:
            try:
                check_name(token_name)
            except ValueError as e:
                return str(e)
        return True

    @classmethod
    def apply(cls, clip, embedding, token_name):  # 0.1.0's method, for scripts that call the node directly
        return legacy(cls.execute(clip, embedding, token_name))

    @classmethod
    def execute(cls, clip, embedding, token_name) -> io.NodeOutput:
        check_links(clip=(clip, "CLIP"), embedding=(embedding, "EMBEDDING"))
        name = check_name(token_name) if token_name else own_name(embedding, "token_name")
        emb_io.check_vectors(embedding)  # a NaN token would turn every image black
        return io.NodeOutput(host.apply_embedding(clip, embedding, name))
