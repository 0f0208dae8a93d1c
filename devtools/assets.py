"""Seeded synthetic assets for tests and demos: SD1.5-format checkpoints and toy photos.

No pretrained weights are available here, so checkpoints are built from the host's own
module classes (so every key and shape is exactly what the host expects) and every tensor
is then filled with seeded random values. Each tensor gets its own generator seeded from
(seed, key), so the file is byte-identical for a given seed and independent of module
iteration order.

CLI:
    python -m devtools.assets checkpoint --size tiny --out PATH [--seed N]
    python -m devtools.assets photos --out DIR [--n 4] [--size 64] [--seed N] [--with-junk]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SIZES = ("tiny", "full")
# Storage dtypes; the host casts to its own compute dtype on load (fp32 on CPU).
DTYPES = ("float16", "float32")
# Bump when the generated values change, so cached files are not reused.
FORMAT_VERSION = "1"

# Prefixes of an original-format (LDM) SD1.x checkpoint.
UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model.transformer."
VAE_PREFIX = "first_stage_model."

# What comfy.model_detection.detect_unet_config derives from the keys, plus the SD15
# extras (num_heads=8, num_head_channels=-1) that comfy.supported_models.SD15 forces.
# SD15 only matches model_channels=320, context_dim=768, no linear proj_in, no ADM,
# so "tiny" keeps those and shrinks depth: one level, one res block, depth-1 attention.
_UNET_COMMON: dict[str, Any] = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
    "num_heads": 8,
    "num_head_channels": -1,
}
UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "full": {
        **_UNET_COMMON,
        "num_res_blocks": [2, 2, 2, 2],
        "channel_mult": [1, 2, 4, 4],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "transformer_depth_middle": 1,
    },
    "tiny": {
        **_UNET_COMMON,
        "num_res_blocks": [1],
        "channel_mult": [1],
        "transformer_depth": [1],
        "transformer_depth_output": [1, 1],
        # Keep a middle block (with attention) so code that patches/hooks it still has one.
        "transformer_depth_middle": 1,
    },
}

# The host builds the SD VAE from a hard-coded config (comfy/sd.py VAE.__init__, branch
# "default SD1.x/SD2.x VAE parameters"); only latent channels come from the keys, so the
# VAE cannot be shrunk without the host misreading it. Both sizes use the real one.
VAE_DDCONFIG: dict[str, Any] = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}
VAE_EMBED_DIM = 4

# Gain for layers whose output is added onto a residual stream: < 1 keeps the stream
# from growing too fast with depth (the original models zero-init these, which would make
# the random UNet ignore its inputs and the prompt).
_RESIDUAL_GAIN = 0.5
_RESIDUAL_OUTPUTS = {
    # UNet: ResBlock second conv, attention out, feed-forward out, transformer proj_out.
    "out_layers.3",
    "to_out.0",
    "ff.net.2",
    "proj_out",
    # VAE ResnetBlock second conv (AttnBlock uses proj_out, above).
    "conv2",
    # CLIP attention out and MLP out.
    "out_proj",
    "fc2",
}
# CLIP embeddings at the scale of real CLIP-L (and HF's initializer_range), so that
# embedding-space step sizes tuned on real models are meaningful on these ones.
_EMBEDDING_STD = 0.02
# The UNet's last conv sees SiLU(GroupNorm(h)) (second moment ~0.36); this gain gives an
# eps prediction of roughly unit variance, like a trained model.
_UNET_OUT_GAIN = 1.6
_CLIP_POSITIONS = 77


def _key_seed(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{FORMAT_VERSION}/{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _randn(shape: tuple[int, ...], seed: int, key: str, std: float) -> Any:
    import torch

    gen = torch.Generator(device="cpu").manual_seed(_key_seed(seed, key))
    return torch.randn(shape, generator=gen, dtype=torch.float32).mul_(std)


def _host_modules(size: str) -> list[tuple[str, Any]]:
    """Instantiate the host's UNet, CLIP-L text model and SD VAE on the meta device."""
    import torch

    from devtools.host_path import import_host

    import_host()
    import comfy.clip_model
    import comfy.ldm.models.autoencoder
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    # Read the CLIP-L config from the host instead of restating it: the host ignores the
    # checkpoint's shapes and always builds this one.
    clip_config_path = Path(comfy.clip_model.__file__).with_name("sd1_clip_config.json")
    clip_config = json.loads(clip_config_path.read_text())

    # Meta device: only names and shapes are needed; values are generated separately.
    with torch.device("meta"):
        unet = UNetModel(**UNET_CONFIGS[size], operations=comfy.ops.disable_weight_init)
        clip = comfy.clip_model.CLIPTextModel(
            clip_config,
            dtype=torch.float32,
            device="meta",
            operations=comfy.ops.disable_weight_init,
        )
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(
            ddconfig=VAE_DDCONFIG, embed_dim=VAE_EMBED_DIM
        )
    return [(UNET_PREFIX, unet), (CLIP_PREFIX, clip), (VAE_PREFIX, vae)]


def _init_std(module: Any, local_name: str, full_key: str) -> float | None:
    """Std for a weight (None = constant fill handled by caller)."""
    import torch

    if isinstance(module, torch.nn.Embedding):
        return _EMBEDDING_STD
    if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
        w = module.weight
        fan_in = math.prod(w.shape[1:])
        gain = 1.0
        if any(local_name.endswith(suffix) for suffix in _RESIDUAL_OUTPUTS):
            gain = _RESIDUAL_GAIN
        if full_key == UNET_PREFIX + "out.2.weight":
            gain = _UNET_OUT_GAIN
        return gain / math.sqrt(fan_in)
    return None


def _iter_tensors(prefix: str, root: Any, seed: int) -> Iterator[tuple[str, Any]]:
    """Yield (checkpoint key, fp32 tensor) for every entry of root.state_dict()."""
    import torch

    modules = dict(root.named_modules())
    params = {name for name, _ in root.named_parameters()}
    for name, meta in root.state_dict(keep_vars=True).items():
        key = prefix + name
        if prefix == CLIP_PREFIX and name.startswith("text_projection."):
            # Original SD1.x checkpoints have no projection, and the host would remap this
            # key to text_model.text_projection (unexpected) anyway.
            continue
        if name not in params:
            raise RuntimeError(
                f"unexpected buffer {key}: decide how to fill it before using it"
            )
        mod_name, _, attr = name.rpartition(".")
        module = modules[mod_name]
        shape = tuple(meta.shape)
        if attr == "bias":
            yield key, torch.zeros(shape)
        elif isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            yield key, torch.ones(shape)
        else:
            std = _init_std(module, mod_name, key)
            if std is None:
                raise RuntimeError(
                    f"no init rule for {key} ({type(module).__name__}.{attr})"
                )
            yield key, _randn(shape, seed, key, std)


def build_state_dict(
    size: str = "tiny", seed: int = 0, dtype: str = "float16"
) -> dict[str, Any]:
    """Return the checkpoint tensors (CPU, contiguous) without writing them."""
    import torch

    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    store = getattr(torch, dtype)
    sd: dict[str, Any] = {}
    for prefix, module in _host_modules(size):
        for key, tensor in _iter_tensors(prefix, module, seed):
            sd[key] = tensor.to(store).contiguous()
    # Real SD1.5 files carry this int64 buffer (HF CLIPTextModel); the host drops it on load,
    # but tools that read raw checkpoints may look for it.
    sd[CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(
        _CLIP_POSITIONS, dtype=torch.int64
    )[None]
    return sd


def _canonicalize_header(path: Path) -> None:
    """Sort the header's __metadata__ entries in place.

    safetensors keeps metadata in a Rust HashMap, whose iteration order is randomised per
    process, so without this two runs with the same seed can differ in the header bytes.
    """
    with path.open("r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        raw = f.read(size)
        header = json.loads(raw)
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        # Same compact form as the writer, re-padded with spaces to the same length.
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:
            raise RuntimeError("unexpected safetensors header layout")
        f.seek(8)
        f.write(text.ljust(size, b" "))


def build_sd15_checkpoint(
    path: str | os.PathLike[str],
    size: str = "tiny",
    seed: int = 0,
    *,
    dtype: str = "float16",
) -> Path:
    """Write a seeded random SD1.5 checkpoint (UNet + CLIP-L + VAE) to `path`; return it.

    size: "tiny" (smallest UNet the host still detects as SD15; full CLIP-L and VAE) or
    "full" (the real SD1.5 shapes). Tensors are stored as `dtype` ("float16" or "float32");
    the host upcasts to its compute dtype on load. Same arguments -> byte-identical file.
    """
    from safetensors.torch import save_file

    out = Path(path)
    sd = build_state_dict(size, seed, dtype)
    metadata = {
        "format": "pt",
        "zoodip.devtools": json.dumps(
            {
                "kind": "sd15-random",
                "size": size,
                "seed": seed,
                "dtype": dtype,
                "version": FORMAT_VERSION,
            },
            sort_keys=True,
        ),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # Temp file in the target directory so os.replace is atomic (same filesystem); named
    # by pid + random suffix rather than mkstemp so it gets normal (umask) permissions.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        save_file(sd, str(tmp), metadata=metadata)
        _canonicalize_header(tmp)
        # safetensors creates files 0600; give the usual umask-based permissions.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return out


def cached_sd15_checkpoint(
    size: str = "tiny",
    seed: int = 0,
    *,
    dtype: str = "float16",
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Return a checkpoint from the cache, building it on first use.

    Cache dir: `cache_dir`, else $ZOODIP_ASSET_CACHE, else <pack>/.cache/devtools (git-ignored).
    The name encodes every input (and FORMAT_VERSION), so a stale file is never reused.
    Concurrent builders are safe: each writes its own temp file and os.replace is atomic.
    """
    if cache_dir is None:
        cache_dir = (
            os.environ.get("ZOODIP_ASSET_CACHE")
            or Path(__file__).resolve().parent.parent / ".cache" / "devtools"
        )
    path = (
        Path(cache_dir) / f"sd15-{size}-s{seed}-{dtype}-v{FORMAT_VERSION}.safetensors"
    )
    if not path.is_file():
        build_sd15_checkpoint(path, size=size, seed=seed, dtype=dtype)
    return path


# ---------------------------------------------------------------------------------------
# Photos


def _photo(size: int, rng: Any) -> Any:
    """One RGB uint8 image: the same toy subject, slightly moved/scaled/lit, on a texture."""
    import numpy as np
    from PIL import Image, ImageDraw

    ss = 4  # draw supersampled, then downsample: cheap antialiasing
    big = size * ss

    # Background: warm-grey wall gradient + low-frequency blotches + fine grain.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    tilt = rng.uniform(-0.15, 0.15)
    base = np.array([0.62, 0.58, 0.52], np.float32) + rng.uniform(
        -0.04, 0.04, 3
    ).astype(np.float32)
    bg = base[None, None, :] * (0.85 + 0.3 * (yy + tilt * xx))[..., None]
    coarse = rng.normal(0.0, 0.06, (5, 5, 1)).astype(np.float32)
    blotch = (
        np.asarray(
            Image.fromarray(
                ((coarse[..., 0] + 0.5) * 255).clip(0, 255).astype(np.uint8)
            ).resize((size, size), Image.Resampling.BICUBIC),
            np.float32,
        )[..., None]
        / 255.0
        - 0.5
    )
    bg = bg + blotch + rng.normal(0.0, 0.02, (size, size, 1)).astype(np.float32)
    img = Image.fromarray((bg.clip(0, 1) * 255).astype(np.uint8), "RGB").resize(
        (big, big), Image.Resampling.NEAREST
    )

    # Subject: a red ball with a yellow band and a white highlight, sitting on a shadow.
    draw = ImageDraw.Draw(img)
    cx = big * (0.5 + rng.uniform(-0.1, 0.1))
    cy = big * (0.52 + rng.uniform(-0.08, 0.08))
    r = big * 0.26 * rng.uniform(0.85, 1.15)
    shadow = (70, 62, 55)
    draw.ellipse(
        (cx - r * 1.05, cy + r * 0.75, cx + r * 1.05, cy + r * 1.15), fill=shadow
    )
    shade = rng.uniform(0.9, 1.05)
    red = tuple(int(min(255, c * shade)) for c in (205, 38, 32))
    yellow = tuple(int(min(255, c * shade)) for c in (240, 200, 40))
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=red)
    draw.ellipse((cx - r, cy - r * 0.25, cx + r, cy + r * 0.25), fill=yellow)
    hr = r * 0.22
    hx, hy = cx - r * 0.4, cy - r * 0.45
    draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=(250, 245, 235))
    return img.resize((size, size), Image.Resampling.LANCZOS)


def make_photos(
    directory: str | os.PathLike[str],
    n: int = 4,
    size: int = 64,
    seed: int = 0,
    with_junk: bool = False,
) -> list[Path]:
    """Write n PNG photos of one synthetic subject into `directory`; return their paths.

    Each photo varies position, scale, shading and background slightly (deterministic per
    seed and index). with_junk=True also writes `notes.txt` (not returned) so loaders'
    skipping of non-image files can be tested.
    """
    import numpy as np

    if n < 0 or size < 8:
        raise ValueError("need n >= 0 and size >= 8")
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        path = out_dir / f"photo_{i:03d}.png"
        _photo(size, rng).save(path, format="PNG", optimize=False)
        paths.append(path)
    if with_junk:
        (out_dir / "notes.txt").write_text(
            "not an image: loaders should skip this file\n"
        )
    return paths


# ---------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.assets", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    ck = sub.add_parser(
        "checkpoint", help="write a seeded random SD1.5 .safetensors checkpoint"
    )
    ck.add_argument("--size", choices=SIZES, default="tiny")
    ck.add_argument("--out", required=True)
    ck.add_argument("--seed", type=int, default=0)
    ck.add_argument("--dtype", choices=DTYPES, default="float16")
    ph = sub.add_parser("photos", help="write synthetic subject photos (PNG)")
    ph.add_argument("--out", required=True)
    ph.add_argument("--n", type=int, default=4)
    ph.add_argument("--size", type=int, default=64)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--with-junk", action="store_true")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    if args.cmd == "checkpoint":
        path = build_sd15_checkpoint(
            args.out, size=args.size, seed=args.seed, dtype=args.dtype
        )
        mb = path.stat().st_size / 1e6
        print(f"{path} ({mb:.1f} MB, {time.perf_counter() - t0:.1f}s)")
    else:
        for p in make_photos(
            args.out, n=args.n, size=args.size, seed=args.seed, with_junk=args.with_junk
        ):
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
