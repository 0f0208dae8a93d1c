"""Fidelity scores of generated images: CLIP-I, CLIP-T (open_clip) and DINO similarity.

As in the paper's protocol (DreamBooth): CLIP-I is the mean cosine similarity between the image
embeddings of every generated image and every reference photo; CLIP-T the mean cosine between the
generated images and the prompt's text embedding; DINO the mean cosine of DINO CLS features
between generated and reference images. Models come from the user's local files only.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import first_lines


def to_pil(images: torch.Tensor, what: str = "images") -> list:
    """ComfyUI IMAGE (B, H, W, C, 0..1) -> PIL images, as any image file would be read."""
    from PIL import Image

    from .images import rgb_batch

    arr = (rgb_batch(images, what).cpu().numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def _mean_pair_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = torch.nn.functional.normalize(b.float(), dim=-1)
    return float((a @ b.T).mean())


def load_open_clip(weights: Path, architecture: str, device: str = "cpu"
                   ) -> tuple[torch.nn.Module, Callable[[Any], torch.Tensor], Callable[..., torch.Tensor]]:
    """(model, preprocess, tokenizer) from a local weights file.

    A ``<weights stem>.json`` beside the file (open_clip's model-config format) defines a custom
    architecture; otherwise ``architecture`` names one of open_clip's (e.g. ViT-B-32).
    """
    import open_clip

    weights = Path(weights)
    config = weights.with_name(weights.name.split(".")[0] + ".json")
    if config.is_file():
        json.loads(config.read_text())  # a clear error for a broken config before open_clip parses it
        open_clip.add_model_config(config)
        architecture = config.stem
    if architecture not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip architecture {architecture!r}: pick one open_clip lists (e.g. ViT-B-32), "
            f"or put its config as {config.name} beside the weights"
        )
    if not weights.is_file():  # open_clip would take a missing path for a tag to download
        raise ValueError(f"{weights} is not a file: put the open_clip weights in models/open_clip")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            architecture, pretrained=str(weights), device=device, weights_only=True
        )
    except (RuntimeError, AssertionError, KeyError, ValueError) as e:
        # strict loading (keys or shapes that do not fit), or open_clip's own checks on the weights
        raise ValueError(
            f"{weights.name} does not fit the open_clip architecture {architecture!r} ({first_lines(e, 2, 300)}): set "
            f"clip_architecture to the file's architecture, or put its config as {config.name} beside it"
        ) from None
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(architecture)


@torch.no_grad()
def clip_scores(model, preprocess, tokenizer, generated: list, references: list, prompt: str, device: str = "cpu") -> dict[str, float]:
    gen = torch.stack([preprocess(im) for im in generated]).to(device)
    ref = torch.stack([preprocess(im) for im in references]).to(device)
    g = model.encode_image(gen)
    r = model.encode_image(ref)
    t = model.encode_text(tokenizer([prompt]).to(device))
    return {"clip_i": _mean_pair_cosine(g, r), "clip_t": _mean_pair_cosine(g, t)}


# keys a file may hold that a feature extractor (num_classes=0) does not use
_UNUSED_KEYS = ("head.", "fc_norm.", "mask_token")


def load_dino(weights: Path, architecture: str, device: str = "cpu") -> torch.nn.Module:
    """A timm ViT (e.g. vit_base_patch14_dinov2) with the user's weights, read without pickles.

    Every weight of the architecture must come from the file (timm's own key conversion for the
    official DINOv2 files is applied first): a file for another architecture would otherwise leave
    random weights behind a confident-looking score.
    """
    import timm

    weights = Path(weights)
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(weights))
        else:
            sd = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{weights.name} could not be read as weights ({first_lines(e, 2, 300)}): it is damaged, or not a "
                         "weights file (pickles with code are never run)") from None
    if not isinstance(sd, dict):
        raise ValueError(f"{weights.name} holds a {type(sd).__name__}, not a dict of weights")
    try:
        model = timm.create_model(architecture, pretrained=False, num_classes=0)
    except RuntimeError as e:
        raise ValueError(f"unknown timm architecture {architecture!r} ({first_lines(e, 2, 300)}): set dino_architecture to "
                         "the file's, e.g. vit_base_patch14_dinov2") from None
    # the model's own timm module (already imported) has its key converter
    filter_fn = getattr(inspect.getmodule(type(model)), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            sd = filter_fn(sd, model)
        except Exception:  # a file the converter does not understand is judged as it is
            pass
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shapes that do not fit
        raise ValueError(
            f"{weights.name} does not fit the timm architecture {architecture!r} ({first_lines(e, 2, 300)}): set "
            "dino_architecture to the file's architecture"
        ) from None
    unexpected = [k for k in unexpected if not k.startswith(_UNUSED_KEYS)]
    if missing or unexpected:
        total = len(model.state_dict())
        raise ValueError(
            f"{weights.name} does not fit the timm architecture {architecture!r}: {len(missing)} of its {total} weights "
            f"are not in the file{' (e.g. ' + missing[0] + ')' if missing else ''}"
            f"{f', and {len(unexpected)} weights of the file belong to none (e.g. {unexpected[0]})' if unexpected else ''}. "
            "Scoring with the missing ones left random would be meaningless: set dino_architecture to the file's "
            "architecture, or pick the right file"
        )
    return model.eval().to(device)


@torch.no_grad()
def dino_score(model, generated: list, references: list, device: str = "cpu") -> float:
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    tf = timm.data.create_transform(**cfg)
    g = model(torch.stack([tf(im) for im in generated]).to(device))
    r = model(torch.stack([tf(im) for im in references]).to(device))
    return _mean_pair_cosine(g, r)
