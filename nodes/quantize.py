"""Quantize Model: a MODEL (and CLIP) with weight-only int8 / 4-bit layers, the inputs untouched.

The quantized layers are the host's own layer classes (``nodes/ops.py``, with the engine's
``zoodip.quant`` maths and tree walk); this file only knows the host's objects: which subtree to
quantize, the weight patches (LoRAs) a ModelPatcher holds, and the bookkeeping attributes its
loader keeps on models and layers.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

import comfy.lora
import torch
from comfy_api.latest import io

from ..zoodip import quant
from . import ops
from .common import check_links
from .schema import Choice, legacy

if TYPE_CHECKING:  # the host's class, for the hints only
    from comfy.model_patcher import ModelPatcher

log = logging.getLogger("zoodip")

_T = {
    "model": (
        "The MODEL to quantize (fp32, fp16, bf16 or fp8 weights; LoRAs applied before this node are baked in). "
        "It is not changed: the graph can keep using it elsewhere."
    ),
    "linear": (
        "Format of the UNet's Linear layers (attention, feed-forward, and 1x1 convolutions, which are Linear layers "
        "applied per pixel): int8 = bitsandbytes LLM.int8 (Linear8bitLt, about 1/4 of fp32); nf4 / fp4 = "
        "bitsandbytes 4-bit (Linear4bit, about 1/7); none = leave them."
    ),
    "conv": (
        "Format of the UNet's other convolutions (most of an SD UNet's weights): int8 = one scale per output channel "
        "(about 1/4 of fp32); nf4 = 4-bit blocks like nf4 Linear (about 1/7); none = leave them."
    ),
    "clip": (
        "Optional: the CLIP to quantize with the same Linear format, its token table too (a lookup dequantizes "
        "only the rows it reads; trained token vectors are spliced in as float, never quantized)."
    ),
    "quantize_clip": "Quantize the connected CLIP's Linear layers and token table too, as the paper does. Off: the CLIP output is the input CLIP.",
}


class ZOODiPQuantizeModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ZOODiPQuantizeModel",
            display_name="Quantize Model",
            category="ZOODiP",
            description=(
                "Weight-only quantization for training at inference memory (and for ordinary sampling): the UNet's "
                "Linear layers become bitsandbytes int8 or 4-bit layers and its convolutions int8 or nf4, dequantized "
                "one layer at a time inside forward. Returns new MODEL/CLIP objects; the inputs are left as they are."
            ),
            inputs=[
                io.Model.Input("model", tooltip=_T["model"]),
                Choice("linear", options=list(quant.LINEAR_FORMATS), default="int8", tooltip=_T["linear"]),
                Choice("conv", options=list(quant.CONV_FORMATS), default="int8", tooltip=_T["conv"]),
                io.Clip.Input("clip", optional=True, tooltip=_T["clip"]),
                io.Boolean.Input("quantize_clip", default=True, optional=True, tooltip=_T["quantize_clip"]),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The quantized model: use it for ZOODiP Train Token and for sampling."),
                io.Clip.Output(display_name="clip", tooltip="The quantized CLIP (or the input CLIP when quantize_clip is off; nothing when no CLIP is connected)."),
            ],
        )

    @classmethod
    def quantize(cls, *args, **kwargs):  # 0.1.0's method, for scripts that call the node directly
        return legacy(cls.execute(*args, **kwargs))

    @classmethod
    def execute(cls, model, linear, conv, clip=None, quantize_clip=True) -> io.NodeOutput:
        check_links(model=(model, "MODEL"), clip=(clip, "CLIP"))
        clip_linear = linear if (clip is not None and quantize_clip) else "none"
        # a format the device cannot run is refused before any work, with what to choose instead
        ops.probe(linear, conv, model.load_device)
        if clip_linear != "none":
            ops.probe(clip_linear, "none", clip.patcher.load_device)
        new_model, report = quantize_patcher(model, linear, conv, scope="diffusion_model")
        log.info("ZOODiP Quantize Model: UNet %s", report.summary())
        new_clip = clip
        if clip_linear != "none":
            new_clip = clip.clone()
            new_clip.patcher, clip_report = quantize_patcher(clip.patcher, clip_linear, "none", scope="",
                                                             tables=token_tables(clip.patcher.model))
            new_clip.cond_stage_model = new_clip.patcher.model
            log.info("ZOODiP Quantize Model: text encoder %s", clip_report.summary())
        return io.NodeOutput(new_model, new_clip)


# --- the host's bookkeeping, reset on the copies ---

_LAYER_STATE = ("prev_comfy_cast_weights", "comfy_patched_weights")
_MODEL_STATE = {
    "model_loaded_weight_memory": 0,
    "lowvram_patch_counter": 0,
    "model_lowvram": False,
    "current_weight_patches_uuid": None,
}


def _reset_layer(name: str, old: torch.nn.Module, new: torch.nn.Module) -> None:
    d = new.__dict__
    if "prev_comfy_cast_weights" in d:  # the loader had switched casting on for partial loading
        d["comfy_cast_weights"] = d["prev_comfy_cast_weights"]
    for attr in _LAYER_STATE:
        d.pop(attr, None)
    for attr in ("weight_function", "bias_function"):
        if attr in d:
            d[attr] = []


def _offload(patcher) -> None:
    """Unload the input model from its load device (a GPU) first, so the copy shares its weights where
    they rest (the offload device) and the input's VRAM is not held by the copy. Nothing to do on a CPU."""
    if patcher.load_device == patcher.offload_device:
        return
    import comfy.model_management as mm

    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[i]
        if loaded.model is not None and loaded.model.is_clone(patcher):
            loaded.model_unload()
            mm.current_loaded_models.pop(i)


def token_tables(root: torch.nn.Module) -> list[str]:
    """Names of the text encoders' token tables (what ``get_input_embeddings()`` returns) in ``root``."""
    names = {id(m): name for name, m in root.named_modules()}
    found = []
    for m in root.modules():
        get = getattr(m, "get_input_embeddings", None)
        table = get() if callable(get) else None
        if isinstance(table, torch.nn.Embedding) and id(table) in names and names[id(table)] not in found:
            found.append(names[id(table)])
    return found


def quantize_patcher(patcher: ModelPatcher, linear: str, conv: str, scope: str, tables: list[str] | tuple[str, ...] = ()
                     ) -> tuple[ModelPatcher, quant.QuantReport]:
    """A new ModelPatcher over a quantized copy of ``patcher.model``; ``patcher`` is not changed.

    Weight patches (LoRAs) on quantized layers are applied to the weights before quantizing; the
    other patches, object patches and model options carry over to the new patcher.
    """
    if patcher.hook_patches or patcher.weight_wrapper_patches:
        # the weights they patch: hook patches are {hook: {weight key: patches}}, wrappers {weight key: ...}
        keys = sorted({*(k for per_hook in patcher.hook_patches.values() for k in per_hook),
                       *patcher.weight_wrapper_patches})
        shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
        raise quant.QuantizationError(
            f"this model carries hook/weight-wrapper patches ({shown}): connect Quantize Model before the nodes "
            "that add them"
        )
    _offload(patcher)
    backup = patcher.backup  # weights the host replaced while a clone's patches are applied

    def tensor_of(name: str, t: torch.Tensor, for_quantization: bool) -> torch.Tensor:
        base = backup[name].weight if name in backup else t
        if for_quantization and name in patcher.patches:
            return comfy.lora.calculate_weight(patcher.patches[name], base.to(torch.float32, copy=True), name)
        return base

    root = patcher.model
    new_root, report = ops.quantize_module(
        root, linear, conv, scope=scope, tables=tables, tensor_of=tensor_of, on_clone=_reset_layer,
        store_device=patcher.offload_device,
    )
    for attr, value in _MODEL_STATE.items():
        if hasattr(root, attr):
            setattr(new_root, attr, value)
    if hasattr(root, "current_patcher"):
        new_root.current_patcher = None
    if hasattr(root, "device"):
        new_root.device = patcher.offload_device

    new = patcher.clone()
    new.model = new_root
    new.parent = None
    # clone() shares these with its parent because they describe the same model object; this is another
    new.backup = {}
    new.object_patches_backup = {}
    new.hook_backup = {}
    new.cached_hook_patches = {}
    new.patches = {k: v[:] for k, v in patcher.patches.items() if k not in set(report.baked)}
    new.patches_uuid = uuid.uuid4()
    new.size = 0
    new.model_size()
    if report.skipped:
        log.warning("ZOODiP Quantize Model: %s", "; ".join(report.skipped))
    return new, report


# --- layers training cannot work through ---

def _rounds_inputs(m: torch.nn.Module, device: torch.device) -> str | None:
    """Why this layer's forward rounds its inputs coarsely on ``device``, or None.

    ZOODiP probes the token with perturbations of ~1e-3 and reads the change of the loss; a layer that
    quantizes its *activations* (not only its weights) rounds such a change away, and the estimate
    is noise. Weight-only formats (fp8/int8/nf4 storage dequantized in forward) are fine.
    """
    import sys

    bnb = sys.modules.get("bitsandbytes.nn")
    if bnb is not None and isinstance(m, bnb.Linear8bitLt) and not ops.is_quantized_layer(m):
        state = getattr(m, "state", None)
        if state is not None and not state.has_fp16_weights and (device.type != "cpu" or not m.training):
            return ("is a bitsandbytes LLM.int8 layer, which rounds its inputs to int8 on this device. Load the model "
                    "with float weights and use Quantize Model (its int8 keeps the inputs in float)")
    import comfy.model_management as mm
    import comfy.ops

    if isinstance(m, comfy.ops.fp8_ops.Linear) and not m.training and mm.supports_fp8_compute(device):
        return ("multiplies in fp8 on this GPU (weight_dtype fp8_e4m3fn_fast), which rounds its inputs to fp8. Load "
                "the model with weight_dtype fp8_e4m3fn instead: the weights stay fp8, the inputs do not")
    return None


def check_trainable(model, clip) -> None:
    """Refuse, before training starts, a model or CLIP with a layer training cannot work through."""
    parts = [("model", getattr(getattr(model, "model", None), "diffusion_model", None), getattr(model, "load_device", None)),
             ("CLIP", getattr(clip, "cond_stage_model", None), getattr(getattr(clip, "patcher", None), "load_device", None))]
    for what, root, device in parts:
        if not isinstance(root, torch.nn.Module) or device is None:
            continue
        for name, m in root.named_modules():
            why = _rounds_inputs(m, torch.device(device))
            if why is not None:
                raise ValueError(
                    f"ZOODiP cannot train through this {what}: its layer {name} ({type(m).__name__}) {why}. ZOODiP probes "
                    "the token with changes of about 1e-3, which that rounding erases."
                )
