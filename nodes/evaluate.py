"""Evaluate Token: CLIP-I, CLIP-T (and DINO) of generated images, from the user's local model files."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..zoodip import evaluate as ev
from .schema import Choice, legacy

OPEN_CLIP_DIR = "open_clip"
DINO_DIR = "dino"
NONE = "none"


def _register_folders() -> None:
    # models/open_clip and models/dino, listed like any other model folder
    models = Path(folder_paths.models_dir)
    for name in (OPEN_CLIP_DIR, DINO_DIR):
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.folder_names_and_paths[name] = ([str(models / name)], folder_paths.supported_pt_extensions)


def _weights(kind: str) -> list[str]:
    _register_folders()
    return [f for f in folder_paths.get_filename_list(kind) if not f.endswith(".json")]


class ZOODiPEvaluate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ZOODiPEvaluate",
            display_name="Evaluate Token",
            category="ZOODiP",
            description=(
                "Scores generated images against the reference photos and the prompt: CLIP-I (image-image), "
                "CLIP-T (image-text) and, with a DINO model, DINO similarity. Models are read from "
                "models/open_clip and models/dino."
            ),
            inputs=[
                io.Image.Input("images", tooltip="Generated images (with the token)."),
                io.Image.Input("references", tooltip="The subject's reference photos (e.g. Load Training Images)."),
                io.String.Input("prompt", default="a photo of a dog", tooltip="The prompt to score CLIP-T against; write the class word where the token was (the paper's protocol)."),
                Choice("clip_model", options=_weights(OPEN_CLIP_DIR) or [NONE], tooltip="An open_clip weights file in models/open_clip (the paper uses ViT-B-32)."),
                io.String.Input("clip_architecture", default="ViT-B-32", tooltip="The open_clip architecture of the file; a <file>.json config beside the weights overrides it."),
                Choice("dino_model", options=[NONE, *_weights(DINO_DIR)], default=NONE, optional=True, tooltip="A DINO weights file in models/dino (the paper uses DINOv2-base), or none."),
                io.String.Input("dino_architecture", default="vit_base_patch14_dinov2", optional=True, tooltip="The timm architecture of the DINO file."),
            ],
            outputs=[
                io.Float.Output(display_name="clip_i", tooltip="Mean cosine, generated vs references."),
                io.Float.Output(display_name="clip_t", tooltip="Mean cosine, generated vs prompt."),
                io.Float.Output(display_name="dino", tooltip="Mean DINO cosine, or -1 without a DINO model."),
            ],
            is_output_node=True,
        )

    @classmethod
    def evaluate(cls, *args, **kwargs):  # 0.1.0's method, for scripts that call the node directly
        return legacy(cls.execute(*args, **kwargs))

    @classmethod
    def execute(cls, images, references, prompt, clip_model, clip_architecture, dino_model=NONE,
                dino_architecture="vit_base_patch14_dinov2") -> io.NodeOutput:
        # first: a plain value where a link belongs, or an empty batch, is refused with what to connect
        gen, ref = ev.to_pil(images, "images"), ev.to_pil(references, "references")
        _register_folders()
        path = folder_paths.get_full_path(OPEN_CLIP_DIR, clip_model) if clip_model != NONE else None
        if path is None:
            raise ValueError(f"no open_clip model selected: put a weights file in {os.path.join(folder_paths.models_dir, OPEN_CLIP_DIR)}")
        model, preprocess, tokenizer = ev.load_open_clip(Path(path), clip_architecture)
        scores = ev.clip_scores(model, preprocess, tokenizer, gen, ref, prompt)
        dino = -1.0
        if dino_model and dino_model != NONE:
            dpath = folder_paths.get_full_path(DINO_DIR, dino_model)
            if dpath is None:
                raise ValueError(f"{dino_model} is not in models/{DINO_DIR}")
            dino = ev.dino_score(ev.load_dino(Path(dpath), dino_architecture), gen, ref)
        text = f"CLIP-I {scores['clip_i']:.4f}  CLIP-T {scores['clip_t']:.4f}" + (f"  DINO {dino:.4f}" if dino >= -0.5 else "")
        return io.NodeOutput(scores["clip_i"], scores["clip_t"], dino, ui={"text": [text]})
