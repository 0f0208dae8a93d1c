"""devtools.assets for SD2.x and SDXL: the tiny models the host takes for those families."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devtools import assets
from devtools.host_path import import_host


def _encode(clip: Any, prompt: str) -> Any:
    return clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)


def _rel(a: Any, b: Any) -> float:
    return float((a - b).norm() / a.norm())


# --- SD2.x: a checkpoint file ------------------------------------------------------------


@pytest.fixture(scope="module")
def sd2_ckpt() -> Path:
    return assets.cached_sd2_checkpoint(seed=0)  # built once per machine (~0.9 GB, git-ignored)


@pytest.fixture(scope="module")
def sd2(sd2_ckpt: Path) -> tuple[Any, Any, Any]:
    import_host()
    import comfy.sd

    return comfy.sd.load_checkpoint_guess_config(str(sd2_ckpt))[:3]


def test_sd2_detected_as_sd20_eps_with_the_openclip_h_encoder(sd2: tuple[Any, Any, Any]) -> None:
    import comfy.model_base

    model, clip, vae = sd2
    config = model.model.model_config
    assert type(config).__name__ == "SD20"
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    detected = {k: v for k, v in config.unet_config.items() if k not in ("dtype", "attn_precision")}
    assert detected == assets.SD2_UNET_CONFIG
    assert list(clip.tokenize("a")) == ["h"]
    te = clip.cond_stage_model.clip_h.transformer
    assert te.num_layers == 24 and te.get_input_embeddings().weight.shape == (49408, 1024)
    assert vae is not None


def test_sd2_file_has_openclip_keys_and_every_host_weight(sd2_ckpt: Path, sd2: tuple[Any, Any, Any]) -> None:
    """Every tensor the host builds comes from the file, text encoder in the OpenCLIP key format
    real SD2 files use (the host converts it on load; converted back here with its own saver)."""
    import comfy.supported_models
    import torch
    from safetensors import safe_open

    model, clip, vae = sd2
    te = {f"clip_h.{k}": v for k, v in clip.cond_stage_model.clip_h.state_dict().items()}
    config = comfy.supported_models.SD20(assets.SD2_UNET_CONFIG)
    loaded = {
        **{assets.UNET_PREFIX + k: v for k, v in model.model.diffusion_model.state_dict().items()},
        **{assets.VAE_PREFIX + k: v for k, v in vae.first_stage_model.state_dict().items()},
        **config.process_clip_state_dict_for_saving(te),
    }
    with safe_open(str(sd2_ckpt), "pt") as f:
        keys = set(f.keys())
        assert keys == set(loaded)
        assert all(k.startswith((assets.UNET_PREFIX, assets.VAE_PREFIX, assets.SD2_CLIP_PREFIX)) for k in keys)
        fused = assets.SD2_CLIP_PREFIX + "transformer.resblocks.23.attn.in_proj_weight"
        assert f.get_slice(fused).get_shape() == [3072, 1024]
        for key, value in loaded.items():
            stored = f.get_tensor(key)
            assert torch.equal(value.to(stored.dtype), stored), key


def test_sd2_text_encoder_gives_distinct_finite_conditioning(sd2: tuple[Any, Any, Any]) -> None:
    import torch

    _, clip, _ = sd2
    a, pa = _encode(clip, "a photo of a cat")
    b, _ = _encode(clip, "a photo of a dog")
    assert a.shape == (1, 77, 1024) and pa.shape == (1, 1024)
    assert torch.isfinite(a).all() and _rel(a, b) > 0.05


def test_sd2_cache_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_build(path: Path, seed: int, *, dtype: str) -> Path:
        calls.append((seed, dtype))
        Path(path).write_bytes(b"x")
        return Path(path)

    monkeypatch.setattr(assets, "build_sd2_checkpoint", fake_build)
    first = assets.cached_sd2_checkpoint(3, cache_dir=tmp_path)
    assert assets.cached_sd2_checkpoint(3, cache_dir=tmp_path) == first
    assert assets.cached_sd2_checkpoint(4, cache_dir=tmp_path) != first
    assert calls == [(3, "float16"), (4, "float16")]
    with pytest.raises(ValueError, match="dtype"):
        assets.build_sd2_state_dict(dtype="int8")


# --- SDXL: built in memory through the host's classes -------------------------------------


@pytest.fixture(scope="module")
def sdxl() -> tuple[Any, Any, Any]:
    return assets.build_tiny_sdxl(seed=0, embedding_directory=[])


def test_tiny_sdxl_is_the_hosts_sdxl(sdxl: tuple[Any, Any, Any]) -> None:
    import comfy.model_base
    import comfy.sd

    model, clip, vae = sdxl
    assert type(model.model.model_config).__name__ == "SDXL"
    assert isinstance(model.model, comfy.model_base.SDXL)
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    assert sorted(clip.tokenize("a")) == ["g", "l"]
    assert isinstance(clip, comfy.sd.CLIP) and isinstance(vae, comfy.sd.VAE)
    te = clip.cond_stage_model
    assert te.clip_l.transformer.get_input_embeddings().weight.shape == (49408, 768)
    assert te.clip_g.transformer.get_input_embeddings().weight.shape == (49408, 1280)
    assert te.clip_l.num_layers == te.clip_g.num_layers == 3


def test_tiny_sdxl_every_weight_has_its_seeded_value(sdxl: tuple[Any, Any, Any]) -> None:
    """No parameter is left as the host's uninitialised memory; the values are the seed's."""
    import comfy.ldm.models.autoencoder
    import torch

    model, clip, vae = sdxl
    with torch.device("meta"):
        meta_vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=assets.VAE_DDCONFIG, embed_dim=assets.VAE_EMBED_DIM)
    parts = [
        (assets.UNET_PREFIX, model.model.diffusion_model, model.model.diffusion_model),
        (assets.SDXL_CLIP_PREFIXES["l"], clip.cond_stage_model.clip_l.transformer, clip.cond_stage_model.clip_l.transformer),
        (assets.SDXL_CLIP_PREFIXES["g"], clip.cond_stage_model.clip_g.transformer, clip.cond_stage_model.clip_g.transformer),
        (assets.VAE_PREFIX, meta_vae, vae.first_stage_model),
    ]
    for prefix, shapes, built in parts:
        state = built.state_dict()
        expected = dict(assets._iter_tensors(prefix, shapes, 0))
        assert {prefix + k for k in state} == set(expected)
        for key, value in expected.items():
            have = state[key[len(prefix):]]
            assert torch.equal(have, value.to(have.dtype)), key


def test_tiny_sdxl_samples_and_reacts_to_the_prompt(sdxl: tuple[Any, Any, Any]) -> None:
    import comfy.sample
    import torch

    model, clip, vae = sdxl
    (a, pa), (b, pb) = _encode(clip, "a photo of a cat"), _encode(clip, "a photo of a dog")
    assert a.shape == (1, 77, 2048) and pa.shape == (1, 1280)
    assert _rel(a, b) > 0.05 and _rel(pa, pb) > 0.05
    latent = torch.zeros(1, 4, 8, 8)
    samples = comfy.sample.sample(
        model, comfy.sample.prepare_noise(latent, 0), 2, 5.0, "euler", "normal",
        [[a, {"pooled_output": pa}]], [[b, {"pooled_output": pb}]], latent, seed=0, disable_pbar=True,
    )
    assert samples.shape == (1, 4, 8, 8) and torch.isfinite(samples).all()
    images = vae.decode(samples)
    assert images.shape == (1, 64, 64, 3) and torch.isfinite(images).all()


# --- full-size SDXL (for the benchmark): layout and the streaming writer ----------------------


def test_full_sdxl_unet_layout_is_detected_as_sdxl() -> None:
    """The full-size builder's UNet keys and shapes are what the host detects as SDXL base."""
    import_host()
    import comfy.model_detection

    unet = assets.sdxl_full_meta_unet()
    sd = {assets.UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    config = comfy.model_detection.model_config_from_unet(sd, assets.UNET_PREFIX)
    assert type(config).__name__ == "SDXL"
    detected = {k: v for k, v in config.unet_config.items() if k not in ("num_heads", "num_head_channels")}
    assert detected == assets.SDXL_FULL_UNET_CONFIG
    assert 2.5e9 < sum(v.numel() for v in sd.values()) < 2.6e9  # SDXL base: 2.57 B


def test_stream_writer_gives_a_file_safetensors_reads(tmp_path: Path) -> None:
    import torch
    from safetensors import safe_open

    g = torch.Generator().manual_seed(0)
    tensors = {"a.weight": torch.randn(3, 5, generator=g).half(), "b": torch.randn(7, generator=g),
               "ids": torch.arange(77).expand(1, -1)}
    shapes = [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    path = tmp_path / "s.safetensors"
    assets._stream_safetensors(path, shapes, iter(tensors.items()), {"z": "1", "format": "pt"})
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "pt", "z": "1"}
        assert set(f.keys()) == set(tensors)
        for k, v in tensors.items():
            assert torch.equal(f.get_tensor(k), v), k
    with pytest.raises(RuntimeError, match="does not match"):
        assets._stream_safetensors(tmp_path / "bad.safetensors", shapes, iter(reversed(tensors.items())), {})
    with pytest.raises(RuntimeError, match="fewer tensors"):
        assets._stream_safetensors(tmp_path / "short.safetensors", shapes, iter(list(tensors.items())[:1]), {})
