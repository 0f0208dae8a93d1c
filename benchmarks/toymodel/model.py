"""Build and train the toy SD1.5-family checkpoint, through the host's own classes.

- UNet: the host's UNetModel in the smallest SD1.5 layout its detection accepts (320 channels,
  768-wide context, one level, one res block, depth-1 attention) without the middle block;
  trained here on 8x8 latents (32x32 px), eps-prediction on the SD1.5 schedule, by calling the
  host's own ``BaseModel.apply_model`` (so training sees exactly what sampling will).
- Text encoder: the host's full-size CLIP-L (the host always builds that for SD1.5) with the
  seeded random weights of devtools.assets, frozen. A random transformer is still a fixed,
  deterministic function of the caption: the UNet learns to read its output. The captions are
  encoded once, by the host's CLIP object loaded from the same file, so the conditioning at
  training is bit-for-bit what CLIPTextEncode gives at sampling.
- VAE: the host's AutoencoderKL (x4 layout) with constructed weights (benchmarks/toymodel/vae.py).

The checkpoint is cached outside the repository (``$ZOODIP_TOYMODEL_CACHE``, else
``~/.cache/zoodip/toymodel``), named by a hash of the settings; ~420 MB, mostly CLIP-L.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import torch_threads
from devtools import assets

from . import data, vae

# Bump when the data, the VAE construction or the training changes: it is part of the cache key.
# 2: held-out concept, its share of the set and the build's thread count are settings (issue 15).
VERSION = "2"
UNET_PREFIX, CLIP_PREFIX, VAE_PREFIX = assets.UNET_PREFIX, assets.CLIP_PREFIX, assets.VAE_PREFIX

# the tiny SD1.5 layout of the test checkpoints, without the middle block: 30% less compute,
# still detected as SD15
UNET_CONFIG: dict[str, Any] = {**assets.UNET_CONFIGS["tiny"], "transformer_depth_middle": -2}

# px: image side; per_concept: training images of each of the 13 concepts; held_out_weight: the
# held-out concept has that many times as many (it is the one a token must find, and with 1/13 of
# the steps the model drew it sloppily); steps/batch/lr: AdamW with linear warm-up and cosine decay
# (3000 steps: at 1800 the model drew its own trained squares 6-38% of the time, at 3000 88-100%);
# seed: data, init and every draw of the training; held_out: "COLOUR,SHAPE" (data.parse_held_out);
# threads: torch threads the build runs with, whatever the caller set (CPU kernels sum in a
# thread-dependent order, so the same settings on another thread count would give other weights).
SIZES: dict[str, dict[str, Any]] = {
    "full": {"px": 32, "per_concept": 96, "held_out_weight": 2, "steps": 3000, "batch": 16, "lr": 1e-3, "warmup": 50,
             "seed": 0, "held_out": "purple,cross", "threads": 2},
    "smoke": {"px": 32, "per_concept": 2, "held_out_weight": 2, "steps": 2, "batch": 4, "lr": 1e-3, "warmup": 1,
              "seed": 0, "held_out": "purple,cross", "threads": 1},
}

log = logging.getLogger("zoodip.toymodel")


def settings_for(size: str, **overrides: Any) -> dict[str, Any]:
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    s = {**SIZES[size], **{k: v for k, v in overrides.items() if v is not None}}
    unknown = set(s) - set(SIZES["full"])
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}")
    s["held_out"] = ",".join(data.parse_held_out(s["held_out"]))  # one spelling, one cache key
    for key in ("threads", "steps"):  # the CLIs say it first, in their flags' words (cli.toy_overrides)
        if int(s[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {s[key]}")
    return s


def held_out(settings_or_info: dict[str, Any]) -> tuple[str, str]:
    """The held-out concept of a settings dict or of a checkpoint's build record (model.info)."""
    s = settings_or_info.get("settings", settings_or_info)
    return data.parse_held_out(s.get("held_out", ",".join(data.HELD_OUT)))


def settings_key(settings: dict[str, Any]) -> str:
    blob = json.dumps({"settings": settings, "version": VERSION, "unet": UNET_CONFIG}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_dir() -> Path:
    env = os.environ.get("ZOODIP_TOYMODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "zoodip" / "toymodel"


def checkpoint_path(size: str, settings: dict[str, Any] | None = None) -> Path:
    settings = settings or settings_for(size)
    return cache_dir() / f"zoodip-toy-{size}-{settings_key(settings)}.safetensors"


# --- initial tensors --------------------------------------------------------------------------

def _initial_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Seeded random UNet (fp32) and CLIP-L (fp16), constructed VAE (fp16), LDM key layout."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel


    sd: dict[str, torch.Tensor] = {}
    with torch.device("meta"):
        unet = UNetModel(**UNET_CONFIG, operations=comfy.ops.disable_weight_init)
    for k, v in assets._iter_tensors(UNET_PREFIX, unet, seed):
        sd[k] = v.contiguous()
    # zero last conv, as SD's training starts: the first prediction is eps_hat = 0 (loss 1), not noise
    sd[UNET_PREFIX + "out.2.weight"].zero_()
    clip = assets._meta_clip(assets._host_clip_config("sd1_clip_config.json"))
    for k, v in assets._iter_tensors(CLIP_PREFIX, clip, seed):
        sd[k] = v.to(torch.float16).contiguous()
    sd[CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    for k, v in vae.build_state_dict().items():
        sd[VAE_PREFIX + k] = v.to(torch.float16).contiguous()
    return sd


def _write(path: Path, sd: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:

    return assets._write_checkpoint(path, sd, {"format": "pt", **meta})


def load(path: str | os.PathLike[str]) -> tuple[Any, Any, Any]:
    """(MODEL, CLIP, VAE) by the host's checkpoint loader (what CheckpointLoaderSimple calls)."""
    import comfy.sd

    out = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True, embedding_directory=None)
    return out[0], out[1], out[2]


def encode_captions(clip: Any, captions: list[str]) -> dict[str, torch.Tensor]:
    """Caption -> (77, 768) conditioning, as CLIPTextEncode computes it."""
    out = {}
    with torch.no_grad():
        for c in captions:
            out[c] = clip.encode_from_tokens(clip.tokenize(c)).float()[0]
    return out


def encode_images(model: Any, vae_obj: Any, images: np.ndarray) -> torch.Tensor:
    """uint8 N,H,W,3 -> model-space latents (VAE encode, then the model's latent scaling)."""
    with torch.no_grad():
        x = torch.from_numpy(images.astype(np.float32) / 255.0)
        z = vae_obj.encode(x)
        return model.model.process_latent_in(z).float()


# --- training ---------------------------------------------------------------------------------

def train_unet(
    model: Any,
    latents: torch.Tensor,
    concepts: np.ndarray,
    conds: dict[str, torch.Tensor],
    settings: dict[str, Any],
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Denoising training of the host model's UNet in place; returns a log."""
    base = model.model
    unet = base.diffusion_model
    sampling = base.model_sampling
    unet.train()
    for p in unet.parameters():
        p.requires_grad_(True)
    params = [p for p in unet.parameters()]
    opt = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=0.0)
    steps, batch, warm = settings["steps"], settings["batch"], settings["warmup"]
    rng = np.random.default_rng([settings["seed"], 7])
    gen = torch.Generator().manual_seed(settings["seed"] + 11)
    n = latents.shape[0]
    losses: list[float] = []
    t0 = time.perf_counter()
    for k in range(steps):
        lr = settings["lr"] * min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * k / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(0, n, batch)
        caps = data.sample_captions(concepts[idx], rng, held_out(settings))
        ctx = torch.stack([conds[c] for c in caps])
        x0 = latents[torch.from_numpy(idx)]
        t = torch.randint(0, 1000, (batch,), generator=gen)
        sigma = sampling.sigmas[t].float()
        eps = torch.randn(x0.shape, generator=gen)
        x = sampling.noise_scaling(sigma, eps, x0)
        with torch.enable_grad():
            denoised = base.apply_model(x, sigma, c_crossattn=ctx)
            eps_hat = (x - denoised) / sigma.view(-1, 1, 1, 1)
            loss = torch.nn.functional.mse_loss(eps_hat, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        losses.append(loss.item())
        if (k + 1) % 50 == 0 or k + 1 == steps:
            el = time.perf_counter() - t0
            say(f"step {k + 1}/{steps}: loss {np.mean(losses[-50:]):.4f}  lr {lr:.2e}  {el:.0f}s")
    unet.eval()
    for p in unet.parameters():
        p.requires_grad_(False)
    return {"seconds": time.perf_counter() - t0, "loss_first50": float(np.mean(losses[:50])), "loss_last50": float(np.mean(losses[-50:])), "losses": losses}


def build(size: str = "full", out: Path | None = None, say: Callable[[str], None] = print, **overrides: Any) -> Path:
    """Train the toy model and write its checkpoint (needs the host imported, e.g. in a HeadlessHost).

    Runs with settings["threads"] torch threads (restored after), so the weights depend on the
    settings only, not on the caller's thread count.
    """
    settings = settings_for(size, **overrides)
    with torch_threads(settings["threads"]):
        return _build(size, settings, Path(out) if out is not None else checkpoint_path(size, settings), say)


def _build(size: str, settings: dict[str, Any], path: Path, say: Callable[[str], None]) -> Path:
    t_all = time.perf_counter()
    concept = held_out(settings)
    torch.manual_seed(settings["seed"])
    say(f"building initial tensors (seed {settings['seed']}, {torch.get_num_threads()} torch threads)")
    sd = _initial_state_dict(settings["seed"])
    tmp = path.with_name(f".init.{os.getpid()}.{path.name}")  # the host picks the reader by suffix
    try:
        _write(tmp, sd, {})
        model, clip, vae_obj = load(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    import comfy.model_management as mm

    mm.load_models_gpu([model])
    say(f"host detected {type(model.model.model_config).__name__}; encoding captions and images")
    conds = encode_captions(clip, data.all_captions(concept))
    table = data.concepts(concept)
    weights = (1,) * (len(table) - 1) + (int(settings["held_out_weight"]),)
    ds = data.make_set(settings["per_concept"], settings["px"], settings["seed"], table, weights)
    latents = encode_images(model, vae_obj, ds.images)
    say(f"{len(ds)} images, {len(conds)} captions, latents {tuple(latents.shape[1:])}; training {settings['steps']} steps")
    result = train_unet(model, latents, ds.concept, conds, settings, say)
    for k, v in model.model.diffusion_model.state_dict().items():
        sd[UNET_PREFIX + k] = v.detach().float().cpu().contiguous()
    info = {
        "settings": settings,
        "version": VERSION,
        "train_seconds": round(result["seconds"], 1),
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "loss_first50": result["loss_first50"],
        "loss_last50": result["loss_last50"],
        "held_out": " ".join(concept),
        "torch_threads": torch.get_num_threads(),
        "weights_sha256": weights_sha256(sd),
    }
    _write(path, sd, {"zoodip.toymodel": json.dumps(info, sort_keys=True)})
    path.with_suffix(".json").write_text(json.dumps({**info, "losses": result["losses"]}, indent=1))
    say(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB); training {result['seconds']:.0f}s; weights sha256 {info['weights_sha256']}")
    return path


def weights_sha256(sd: dict[str, torch.Tensor] | str | os.PathLike[str]) -> str:
    """sha256 over the tensors (names, dtypes, shapes, bytes; sorted by name), not the file: the
    header also holds the build's timings, which differ between two builds of the same weights."""
    if not isinstance(sd, dict):
        from safetensors.torch import load_file

        sd = load_file(str(sd))
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The build record stored in the checkpoint's header."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("zoodip.toymodel", "{}"))


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a result file records about the toy model it measured: file name, build record and the
    sha256 of its weights, computed from the file now (the one in the build record is what the
    build wrote; a mismatch means the file is not what was built)."""
    record = info(path)
    sha = weights_sha256(path)
    out = {"checkpoint": Path(path).name, "toymodel": record, "weights_sha256": sha}
    if record.get("weights_sha256") not in (None, sha):
        out["weights_sha256_mismatch"] = f"the build recorded {record['weights_sha256']}"
    return out


def cached(size: str = "full", say: Callable[[str], None] = print, **overrides: Any) -> Path:
    """The cached checkpoint of these settings, trained on first use."""
    settings = settings_for(size, **overrides)
    path = checkpoint_path(size, settings)
    if not path.is_file():
        build(size, path, say, **overrides)
    return path
