"""devtools.assets: random SD1.5 checkpoints the host accepts, and synthetic photos."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devtools import assets
from devtools.host_path import host_path, import_host

PACK_ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ("a photo of a cat", "a photo of a dog", "a red car on a street", "")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _load(path: Path) -> tuple[Any, Any, Any]:
    import_host()
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path))
    return model, clip, vae


def _encode(clip: Any, prompt: str) -> Any:
    cond, pooled = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)
    return cond, pooled


def _rel(a: Any, b: Any) -> float:
    return float((a - b).norm() / a.norm())


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return assets.build_sd15_checkpoint(out, size="tiny", seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_ckpt: Path) -> tuple[Any, Any, Any]:
    return _load(tiny_ckpt)


# --- checkpoint ------------------------------------------------------------------------


def test_tiny_detected_as_sd15_eps(tiny: tuple[Any, Any, Any]) -> None:
    import comfy.model_base

    model, clip, vae = tiny
    config = model.model.model_config
    assert type(config).__name__ == "SD15"
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    detected = {k: v for k, v in config.unet_config.items() if k != "dtype"}
    assert detected == assets.UNET_CONFIGS["tiny"]
    assert clip is not None and vae is not None


def test_file_has_standard_keys_and_every_host_weight(
    tiny_ckpt: Path, tiny: tuple[Any, Any, Any]
) -> None:
    """Every tensor the host builds comes from the file (none left as torch.empty)."""
    import torch
    from safetensors import safe_open

    model, clip, vae = tiny
    prefixes = (assets.UNET_PREFIX, assets.CLIP_PREFIX, assets.VAE_PREFIX)
    with safe_open(str(tiny_ckpt), "pt") as f:
        keys = set(f.keys())
        assert all(k.startswith(prefixes) for k in keys)
        assert f.metadata()["format"] == "pt"

        loaded = {
            assets.UNET_PREFIX: model.model.diffusion_model.state_dict(),
            assets.VAE_PREFIX: vae.first_stage_model.state_dict(),
            # The host never gets a projection or logit scale from SD1.x files, and
            # SD1.5 does not use them (unprojected pooled output).
            assets.CLIP_PREFIX: {
                k: v
                for k, v in clip.cond_stage_model.clip_l.transformer.state_dict().items()
                if not k.startswith("text_projection")
            },
        }
        for prefix, state in loaded.items():
            for name, value in state.items():
                key = prefix + name
                assert key in keys, f"host weight {key} missing from the checkpoint"
                stored = f.get_tensor(key)
                assert torch.equal(value.to(stored.dtype), stored), key
    assert (
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight"
        in keys
    )


def test_same_seed_same_bytes_across_processes(tmp_path: Path, tiny_ckpt: Path) -> None:
    """The CLI in a fresh process reproduces the in-process file byte for byte."""
    out = tmp_path / "again.safetensors"
    cmd = [sys.executable, "-m", "devtools.assets", "checkpoint", "--size", "tiny"]
    cmd += ["--out", str(out), "--seed", "0"]
    subprocess.run(cmd, cwd=PACK_ROOT, check=True, capture_output=True, timeout=300)
    assert _sha256(out) == _sha256(tiny_ckpt)
    assert not list(tmp_path.glob(".*.tmp")), "temp file left behind"


def test_other_seed_other_weights(tiny_ckpt: Path) -> None:
    from safetensors import safe_open

    other = assets.build_state_dict("tiny", seed=1)
    with safe_open(str(tiny_ckpt), "pt") as f:
        assert set(f.keys()) == set(other)
        key = assets.UNET_PREFIX + "input_blocks.0.0.weight"
        assert not (f.get_tensor(key) == other[key]).all()
        # Constants (norms, biases, position ids) do not depend on the seed.
        norm = assets.VAE_PREFIX + "decoder.norm_out.weight"
        assert (f.get_tensor(norm) == other[norm]).all() and (other[norm] == 1).all()


def test_ksampler_and_vae_give_finite_outputs(tiny: tuple[Any, Any, Any]) -> None:
    import comfy.sample
    import torch

    model, clip, vae = tiny
    cond, pooled = _encode(clip, PROMPTS[0])
    uncond, upooled = _encode(clip, "")
    positive = [[cond, {"pooled_output": pooled}]]
    negative = [[uncond, {"pooled_output": upooled}]]
    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    samples = comfy.sample.sample(
        model, noise, 20, 7.0, "euler", "normal", positive, negative, latent,
        seed=0, disable_pbar=True,
    )  # fmt: skip
    assert samples.shape == (1, 4, 8, 8)
    assert torch.isfinite(samples).all()

    images = vae.decode(samples).detach()
    assert images.shape == (1, 64, 64, 3)
    assert torch.isfinite(images).all()
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0

    photo = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    encoded = vae.encode(photo).detach()
    assert encoded.shape == (1, 4, 8, 8) and torch.isfinite(encoded).all()


def test_prompts_give_distinct_conditioning(tiny: tuple[Any, Any, Any]) -> None:
    import torch

    model, clip, _ = tiny
    conds = [_encode(clip, p)[0] for p in PROMPTS]
    for c in conds:
        assert c.shape == (1, 77, 768) and torch.isfinite(c).all()
    for i in range(len(conds)):
        for j in range(i + 1, len(conds)):
            # Even "cat" vs "dog" (one token apart) must differ clearly.
            assert _rel(conds[i], conds[j]) > 0.05, (PROMPTS[i], PROMPTS[j])

    # ... and the UNet must react to it (this is what a token is trained through).
    unet = model.model.diffusion_model
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    t = torch.tensor([500.0])
    with torch.inference_mode():
        eps = [unet(x, t, c) for c in conds[:2]]
    assert all(torch.isfinite(e).all() for e in eps)
    assert 0.3 < float(eps[0].std()) < 3.0
    assert _rel(eps[0], eps[1]) > 0.01


def test_reload_gives_identical_outputs(
    tiny_ckpt: Path, tiny: tuple[Any, Any, Any]
) -> None:
    """No uninitialised host weights reach the outputs: a second load matches exactly."""
    import torch

    model_a, clip_a, _ = tiny
    model_b, clip_b, _ = _load(tiny_ckpt)
    ca, cb = _encode(clip_a, PROMPTS[2]), _encode(clip_b, PROMPTS[2])
    assert torch.equal(ca[0], cb[0]) and torch.equal(ca[1], cb[1])
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10.0])
    with torch.inference_mode():
        ea = model_a.model.diffusion_model(x, t, ca[0])
        eb = model_b.model.diffusion_model(x, t, cb[0])
    assert torch.equal(ea, eb)


def test_bad_arguments_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size"):
        assets.build_sd15_checkpoint(tmp_path / "x.safetensors", size="huge")
    with pytest.raises(ValueError, match="dtype"):
        assets.build_sd15_checkpoint(tmp_path / "x.safetensors", dtype="int8")
    assert not list(tmp_path.iterdir())


def test_cache_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_build(path: Path, size: str, seed: int, *, dtype: str) -> Path:
        calls.append((size, seed, dtype))
        Path(path).write_bytes(b"x")
        return Path(path)

    monkeypatch.setattr(assets, "build_sd15_checkpoint", fake_build)
    first = assets.cached_sd15_checkpoint("tiny", 3, cache_dir=tmp_path)
    second = assets.cached_sd15_checkpoint("tiny", 3, cache_dir=tmp_path)
    other = assets.cached_sd15_checkpoint("tiny", 4, cache_dir=tmp_path)
    assert first == second != other
    assert calls == [("tiny", 3, "float16"), ("tiny", 4, "float16")]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ZOODIP_SLOW") != "1", reason="set ZOODIP_SLOW=1")
def test_full_size_detected_and_finite(tmp_path: Path) -> None:
    import torch

    path = assets.build_sd15_checkpoint(tmp_path / "full.safetensors", size="full")
    assert path.stat().st_size > 2_000_000_000  # ~= the real fp16 SD1.5 file
    model, clip, _ = _load(path)
    config = model.model.model_config
    assert type(config).__name__ == "SD15"
    detected = {k: v for k, v in config.unet_config.items() if k != "dtype"}
    assert detected == assets.UNET_CONFIGS["full"]
    cond = _encode(clip, PROMPTS[0])[0]
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        eps = model.model.diffusion_model(x, torch.tensor([500.0]), cond)
    assert torch.isfinite(eps).all()


# --- photos ----------------------------------------------------------------------------


def test_photos_deterministic_and_varied(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    paths = assets.make_photos(tmp_path / "a", n=4, size=64, seed=0)
    again = assets.make_photos(tmp_path / "b", n=4, size=64, seed=0)
    other = assets.make_photos(tmp_path / "c", n=4, size=64, seed=1)
    assert [p.name for p in paths] == [f"photo_{i:03d}.png" for i in range(4)]
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    assert paths[0].read_bytes() != other[0].read_bytes()

    arrays = []
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (64, 64)
            arrays.append(np.asarray(im, dtype=np.float32))
    # The subject (saturated red) is present in every photo ...
    for a in arrays:
        red = (a[..., 0] > 150) & (a[..., 1] < 90) & (a[..., 2] < 90)
        assert 0.05 < red.mean() < 0.5
    # ... but the photos are not copies of each other.
    assert all(np.abs(arrays[0] - a).mean() > 2.0 for a in arrays[1:])


def test_photos_junk_file_and_cli(tmp_path: Path) -> None:
    paths = assets.make_photos(tmp_path / "j", n=2, size=32, with_junk=True)
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == [
        "notes.txt",
        "photo_000.png",
        "photo_001.png",
    ]
    assert all(p.suffix == ".png" for p in paths)

    assert (
        assets.main(
            ["photos", "--out", str(tmp_path / "cli"), "--n", "3", "--size", "48"]
        )
        == 0
    )
    assert len(list((tmp_path / "cli").glob("*.png"))) == 3


# --- host_path -------------------------------------------------------------------------


def test_host_path_env_override_and_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    assert host_path() == tmp_path.resolve()
    monkeypatch.delenv("COMFYUI_PATH")
    if PACK_ROOT.parent.name != "custom_nodes":
        assert host_path() == (PACK_ROOT.parent / "shared" / "comfyui").resolve()


def test_import_host_is_idempotent() -> None:
    root = import_host()
    import_host()
    from comfy.cli_args import args

    assert sys.path.count(str(root)) == 1
    assert args.cpu
