"""Seeded synthetic assets for tests and demos: SD1.5 and SD2.x checkpoints, tiny SDXL models
(in memory), a full-size SDXL checkpoint (benchmarks), and toy photos.

No pretrained weights are available here, so checkpoints are built from the host's own
module classes (so every key and shape is exactly what the host expects) and every tensor
is then filled with seeded random values. Each tensor gets its own generator seeded from
(seed, key), so the file is byte-identical for a given seed and independent of module
iteration order.

CLI:
    python -m devtools.assets checkpoint --size tiny --out PATH [--seed N]
    python -m devtools.assets checkpoint --family sd2 --out PATH       (tiny only)
    python -m devtools.assets checkpoint --family sdxl --out PATH      (full size only, ~6.9 GB)
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
    return _meta_modules(UNET_CONFIGS[size], "sd1_clip_config.json", CLIP_PREFIX)


def _meta_modules(
    unet_config: dict[str, Any], clip_config_name: str, clip_prefix: str
) -> list[tuple[str, Any]]:
    """The host's UNet, a CLIP text model of the host's own config file and the SD VAE, on
    the meta device, each with the key prefix its tensors get."""
    import torch

    from devtools.host_path import import_host

    import_host()
    import comfy.ldm.models.autoencoder
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    # Read the CLIP config from the host instead of restating it: the host ignores the
    # checkpoint's shapes and always builds this one.
    clip_config = _host_clip_config(clip_config_name)

    # Meta device: only names and shapes are needed; values are generated separately.
    with torch.device("meta"):
        unet = UNetModel(**unet_config, operations=comfy.ops.disable_weight_init)
        clip = _meta_clip(clip_config)
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(
            ddconfig=VAE_DDCONFIG, embed_dim=VAE_EMBED_DIM
        )
    return [(UNET_PREFIX, unet), (clip_prefix, clip), (VAE_PREFIX, vae)]


def _host_clip_config(name: str) -> dict[str, Any]:
    """A text-encoder config file the host builds its CLIP from (sd1_clip_config.json next
    to comfy/clip_model.py, sd2_clip_config.json in comfy/text_encoders/)."""
    import comfy.clip_model

    comfy_dir = Path(comfy.clip_model.__file__).parent
    for folder in (comfy_dir, comfy_dir / "text_encoders"):
        if (folder / name).is_file():
            return json.loads((folder / name).read_text())
    raise FileNotFoundError(f"the host has no text encoder config {name}")


def _meta_clip(config: dict[str, Any]) -> Any:
    import comfy.clip_model
    import comfy.ops
    import torch

    with torch.device("meta"):
        return comfy.clip_model.CLIPTextModel(
            config,
            dtype=torch.float32,
            device="meta",
            operations=comfy.ops.disable_weight_init,
        )


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


def _write_checkpoint(out: Path, sd: dict[str, Any], metadata: dict[str, str]) -> Path:
    """Write `sd` to `out` atomically, with a canonical (reproducible) header."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file(sd, str(tmp), metadata=metadata)
        _canonicalize_header(tmp)

    return _atomic_write(out, write)


def _atomic_write(out: Path, write: Any) -> Path:
    """Call write(tmp) on a temp file beside `out`, then move it to `out` (never half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # Temp file in the target directory so os.replace is atomic (same filesystem); named
    # by pid + random suffix rather than mkstemp so it gets normal (umask) permissions.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
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


def _metadata(kind: str, **fields: Any) -> dict[str, str]:
    return {
        "format": "pt",
        "zoodip.devtools": json.dumps(
            {"kind": kind, **fields, "version": FORMAT_VERSION}, sort_keys=True
        ),
    }


def _cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """`cache_dir`, else $ZOODIP_ASSET_CACHE, else <pack>/.cache/devtools (git-ignored)."""
    if cache_dir is None:
        cache_dir = (
            os.environ.get("ZOODIP_ASSET_CACHE")
            or Path(__file__).resolve().parent.parent / ".cache" / "devtools"
        )
    return Path(cache_dir)


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
    out = Path(path)
    sd = build_state_dict(size, seed, dtype)
    metadata = _metadata("sd15-random", size=size, seed=seed, dtype=dtype)
    return _write_checkpoint(out, sd, metadata)


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
    path = (
        _cache_dir(cache_dir)
        / f"sd15-{size}-s{seed}-{dtype}-v{FORMAT_VERSION}.safetensors"
    )
    if not path.is_file():
        build_sd15_checkpoint(path, size=size, seed=seed, dtype=dtype)
    return path


# ---------------------------------------------------------------------------------------
# SD2.x: a checkpoint file the host detects as SD20


# What the host detects from an SD2 file, plus the SD20 extras (num_heads=-1,
# num_head_channels=64; the host adds attn_precision too). SD20 matches model_channels 320,
# context_dim 1024, linear proj_in, no ADM: the tiny SD1 depth with those numbers.
SD2_UNET_CONFIG: dict[str, Any] = {
    **UNET_CONFIGS["tiny"],
    "context_dim": 1024,
    "use_linear_in_transformer": True,
    "num_heads": -1,
    "num_head_channels": 64,
}
# Where SD2 checkpoints keep the OpenCLIP-H text encoder (OpenCLIP key names).
SD2_CLIP_PREFIX = "cond_stage_model.model."
_SD2_HF_PREFIX = "clip_h.transformer."  # the host's own names, before conversion


def build_sd2_state_dict(seed: int = 0, dtype: str = "float16") -> dict[str, Any]:
    """The tensors of a tiny SD2.x checkpoint: tiny UNet, the full OpenCLIP-H text encoder
    (24 layers, width 1024: the host builds it from a fixed config) and the full SD VAE.

    The text encoder is generated under the host's own (HF-style) names and converted to
    the OpenCLIP names real SD2 files use with the host's own save conversion
    (SD20.process_clip_state_dict_for_saving), so loading exercises the host's real path
    (fused q/k/v in_proj, transposed text_projection).
    """
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    store = getattr(torch, dtype)
    modules = _meta_modules(SD2_UNET_CONFIG, "sd2_clip_config.json", _SD2_HF_PREFIX)
    import comfy.supported_models

    sd: dict[str, Any] = {}
    clip_sd: dict[str, Any] = {}
    for prefix, module in modules:
        target = clip_sd if prefix == _SD2_HF_PREFIX else sd
        for key, tensor in _iter_tensors(prefix, module, seed):
            target[key] = tensor.to(store).contiguous()
    config = comfy.supported_models.SD20(SD2_UNET_CONFIG)
    converted = config.process_clip_state_dict_for_saving(clip_sd)
    if not all(k.startswith(SD2_CLIP_PREFIX) for k in converted):
        raise RuntimeError("the host's SD2 text encoder conversion changed its key names")
    sd.update({k: v.contiguous() for k, v in converted.items()})
    # real SD2 files carry OpenCLIP's logit scale, ln(100); SD2 does not use it
    sd[SD2_CLIP_PREFIX + "logit_scale"] = torch.tensor(math.log(100.0)).to(store)
    return sd


def build_sd2_checkpoint(
    path: str | os.PathLike[str], seed: int = 0, *, dtype: str = "float16"
) -> Path:
    """Write a seeded random SD2.x checkpoint (tiny UNet, full OpenCLIP-H text encoder, SD
    VAE) the host detects as SD20 with EPS prediction; return its path.

    v-prediction: the host tells SD2 eps from v by a statistic of a layer this tiny UNet
    does not have, so it loads as eps; apply the core node ModelSamplingDiscrete
    (sampling "v_prediction"), as users do for v-models the detection misses.
    Same arguments -> byte-identical file (about 0.9 GB in float16).
    """
    out = Path(path)
    sd = build_sd2_state_dict(seed, dtype)
    return _write_checkpoint(out, sd, _metadata("sd2-random", size="tiny", seed=seed, dtype=dtype))


def cached_sd2_checkpoint(
    seed: int = 0,
    *,
    dtype: str = "float16",
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Like cached_sd15_checkpoint, for build_sd2_checkpoint (built once per machine)."""
    path = _cache_dir(cache_dir) / f"sd2-tiny-s{seed}-{dtype}-v{FORMAT_VERSION}.safetensors"
    if not path.is_file():
        build_sd2_checkpoint(path, seed=seed, dtype=dtype)
    return path


# ---------------------------------------------------------------------------------------
# SDXL: tiny models built in memory through the host's own classes


# The host detects SDXL only with its full transformer depth ([0, 0, 2, 2, 10, 10]), so a
# tiny SDXL cannot be a checkpoint file; it is built from the host's SDXL model config with
# this small UNet instead (what detection would give, at one level, 64 channels: the least
# with the host's 64 channels per attention head and 32 norm groups).
SDXL_TINY_UNET_CONFIG: dict[str, Any] = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 64,
    "num_res_blocks": [1],
    "channel_mult": [1],
    "transformer_depth": [1],
    "transformer_depth_output": [1, 1],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}
# Text encoders of the real widths (768 and 1280: the embeddings and the UNet's context
# depend on them) and vocabulary, with 3 layers (SDXL reads the penultimate one) and a
# small MLP. comfy.sd1_clip.SDClipModel applies "<name>_model_config" over its config file.
SDXL_TINY_CLIP_OPTIONS: dict[str, dict[str, Any]] = {
    "clip_l_model_config": {"num_hidden_layers": 3, "intermediate_size": 512},
    "clip_g_model_config": {"num_hidden_layers": 3, "intermediate_size": 512},
}
SDXL_CLIP_PREFIXES = {"l": "clip_l.transformer.", "g": "clip_g.transformer."}


def _fill(root: Any, prefix: str, seed: int) -> None:
    """Give every parameter of a built host module its seeded value (as in the files)."""
    import torch

    values = {k[len(prefix) :]: v for k, v in _iter_tensors(prefix, root, seed)}
    with torch.no_grad():
        root.load_state_dict(values, strict=True)


def build_tiny_sdxl(
    seed: int = 0, *, embedding_directory: Any = None
) -> tuple[Any, Any, Any]:
    """(MODEL, CLIP, VAE) of a tiny SDXL, built through the host's own classes.

    MODEL is a ModelPatcher around the host's SDXL model (model_config
    comfy.supported_models.SDXL, EPS) with SDXL_TINY_UNET_CONFIG; CLIP is a comfy.sd.CLIP
    with the SDXL clip target (CLIP-L + CLIP-G, SDXL_TINY_CLIP_OPTIONS); VAE is the SD VAE
    (SDXL's architecture) with the same values as the checkpoints' VAE of this seed. Every
    parameter is filled with the seeded rules of the checkpoint builders, so the same seed
    gives the same model. `embedding_directory` is where `embedding:` names are looked up
    (default: the host's models/embeddings folders, as the checkpoint loader passes).
    """
    import torch

    from devtools.host_path import import_host

    import_host()
    import comfy.ldm.models.autoencoder
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import folder_paths

    if embedding_directory is None:
        embedding_directory = folder_paths.get_folder_paths("embeddings")

    config = comfy.supported_models.SDXL(SDXL_TINY_UNET_CONFIG)
    load_device = mm.get_torch_device()
    # the dtypes the checkpoint loader would choose for this device
    unet_dtype = mm.unet_dtype(supported_dtypes=config.supported_inference_dtypes)
    config.set_inference_dtype(
        unet_dtype,
        mm.unet_manual_cast(unet_dtype, load_device, config.supported_inference_dtypes),
    )
    model = config.get_model({}, "", device=torch.device("cpu"))
    _fill(model.diffusion_model, UNET_PREFIX, seed)
    patcher = comfy.model_patcher.ModelPatcher(
        model, load_device=load_device, offload_device=mm.unet_offload_device()
    )

    clip = comfy.sd.CLIP(
        config.clip_target(),
        embedding_directory=embedding_directory,
        model_options={k: dict(v) for k, v in SDXL_TINY_CLIP_OPTIONS.items()},
    )
    for key, prefix in SDXL_CLIP_PREFIXES.items():
        _fill(getattr(clip.cond_stage_model, f"clip_{key}").transformer, prefix, seed)

    with torch.device("meta"):
        meta_vae = comfy.ldm.models.autoencoder.AutoencoderKL(
            ddconfig=VAE_DDCONFIG, embed_dim=VAE_EMBED_DIM
        )
    vae_sd = {
        k[len(VAE_PREFIX) :]: v for k, v in _iter_tensors(VAE_PREFIX, meta_vae, seed)
    }
    vae = comfy.sd.VAE(sd=vae_sd)
    return patcher, clip, vae


# The real SDXL base 1.0 UNet (what the host detects from its file); the host adds
# num_heads=-1 and num_head_channels=64 (SDXL's model config extras).
SDXL_FULL_UNET_CONFIG: dict[str, Any] = {
    **SDXL_TINY_UNET_CONFIG,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "transformer_depth_middle": 10,
}
_SDXL_HEADS = {"num_heads": -1, "num_head_channels": 64}
_ST_DTYPES = {"float16": "F16", "float32": "F32", "int64": "I64"}


def sdxl_full_meta_unet() -> Any:
    """The host's UNet with the full SDXL config, on the meta device (shapes only)."""
    import torch

    from devtools.host_path import import_host

    import_host()
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        return UNetModel(
            **SDXL_FULL_UNET_CONFIG, **_SDXL_HEADS, operations=comfy.ops.disable_weight_init
        )


def _sdxl_text_encoders(seed: int, store: Any) -> dict[str, Any]:
    """CLIP-L and CLIP-G (full configs of the host) in the key format of SDXL files, by the
    host's own save conversion (CLIP-G in OpenCLIP names); about 1.6 GB in float16."""
    import comfy.supported_models
    import torch

    hf: dict[str, Any] = {}
    for key, config_name in (("l", "sd1_clip_config.json"), ("g", "clip_config_bigg.json")):
        module = _meta_clip(_host_clip_config(config_name))
        for k, v in _iter_tensors(SDXL_CLIP_PREFIXES[key], module, seed):
            hf[k] = v.to(store)
    hf["clip_g.logit_scale"] = torch.tensor(math.log(100.0)).to(store)
    config = comfy.supported_models.SDXL(SDXL_FULL_UNET_CONFIG)
    return {k: v.contiguous() for k, v in config.process_clip_state_dict_for_saving(hf).items()}


def _stream_safetensors(
    path: Path,
    shapes: list[tuple[str, Any, tuple[int, ...]]],
    tensors: Iterator[tuple[str, Any]],
    metadata: dict[str, str],
) -> None:
    """Write a safetensors file tensor by tensor: `shapes` (key, torch dtype, shape) fixes the
    header first; `tensors` must then yield exactly those, in that order. Only one tensor is
    in memory at a time, so files larger than the RAM can be written."""
    import torch

    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for key, dtype, shape in shapes:
        size = math.prod(shape) * dtype.itemsize
        header[key] = {
            "dtype": _ST_DTYPES[str(dtype).removeprefix("torch.")],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data starts 8-byte aligned
    with path.open("wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        expected = iter(shapes)
        for key, tensor in tensors:
            want = next(expected, None)
            if want is None or (key, tensor.dtype, tuple(tensor.shape)) != want:
                raise RuntimeError(f"tensor {key} does not match the header entry {want}")
            f.write(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        if next(expected, None) is not None:
            raise RuntimeError("fewer tensors than the header announced")


def build_sdxl_checkpoint(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a full-size SDXL (base 1.0 architecture) checkpoint with seeded random weights in
    float16, in the key layout of real SDXL files, so CheckpointLoaderSimple detects SDXL.

    About 6.9 GB; written tensor by tensor (the UNet and VAE are never all in memory; the
    text encoders, 1.6 GB, are, for the host's key conversion). For benchmarks, not tests.
    """
    import torch

    from devtools.host_path import import_host

    import_host()
    import comfy.ldm.models.autoencoder

    store = torch.float16
    out = Path(path)
    text = _sdxl_text_encoders(seed, store)
    unet = sdxl_full_meta_unet()
    with torch.device("meta"):
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(
            ddconfig=VAE_DDCONFIG, embed_dim=VAE_EMBED_DIM
        )
    streamed = [(UNET_PREFIX, unet), (VAE_PREFIX, vae)]
    shapes = [(k, v.dtype, tuple(v.shape)) for k, v in text.items()]
    for prefix, module in streamed:
        shapes += [(prefix + k, store, tuple(v.shape)) for k, v in module.state_dict().items()]

    def tensors() -> Iterator[tuple[str, Any]]:
        yield from text.items()
        for prefix, module in streamed:
            for key, value in _iter_tensors(prefix, module, seed):
                yield key, value.to(store)

    metadata = _metadata("sdxl-random", size="full", seed=seed, dtype="float16")
    return _atomic_write(out, lambda tmp: _stream_safetensors(tmp, shapes, tensors(), metadata))


def cached_sdxl_checkpoint(
    seed: int = 0, *, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Like cached_sd15_checkpoint, for build_sdxl_checkpoint (~6.9 GB, built once)."""
    path = _cache_dir(cache_dir) / f"sdxl-full-s{seed}-float16-v{FORMAT_VERSION}.safetensors"
    if not path.is_file():
        build_sdxl_checkpoint(path, seed=seed)
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
        "checkpoint", help="write a seeded random SD1.5/SD2.x/SDXL .safetensors checkpoint"
    )
    ck.add_argument("--family", choices=("sd15", "sd2", "sdxl"), default="sd15")
    ck.add_argument("--size", choices=SIZES, default=None, help="sd15: tiny (default) or full")
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
        if args.family == "sd2":
            if args.size not in (None, "tiny"):
                parser.error("--family sd2 builds the tiny size only")
            path = build_sd2_checkpoint(args.out, seed=args.seed, dtype=args.dtype)
        elif args.family == "sdxl":
            if args.size not in (None, "full") or args.dtype != "float16":
                parser.error("--family sdxl builds the full size in float16 only")
            path = build_sdxl_checkpoint(args.out, seed=args.seed)
        else:
            path = build_sd15_checkpoint(
                args.out, size=args.size or "tiny", seed=args.seed, dtype=args.dtype
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
