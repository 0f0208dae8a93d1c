"""Fixtures for tests that run the pack inside the real host: a tiny SD1.5 checkpoint, photos."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

CKPT = "zoodip-tiny-sd15.safetensors"
PHOTOS = "dog"


@pytest.fixture(scope="session")
def tiny_ckpt(host) -> str:
    from devtools.assets import cached_sd15_checkpoint

    path = host.model_dir("checkpoints") / CKPT
    if not path.exists():
        # built once per machine (git-ignored cache), linked into the host's temp tree
        path.symlink_to(cached_sd15_checkpoint("tiny", seed=0))
    return CKPT


@pytest.fixture(scope="session")
def photos(host) -> str:
    from devtools.assets import make_photos

    folder = host.input_dir / PHOTOS
    if not folder.exists():
        make_photos(folder, n=4, size=64, seed=0)
    return PHOTOS


@pytest.fixture(scope="session")
def loaded(host, tiny_ckpt):
    """(model, clip, vae) of the tiny checkpoint, loaded once by the host's own loader."""
    import nodes

    return nodes.CheckpointLoaderSimple().load_checkpoint(tiny_ckpt)[:3]


@pytest.fixture
def clean_embeddings(host):
    """An empty embeddings folder for the test; restored empty afterwards."""
    d = host.model_dir("embeddings")
    for p in d.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    yield d
    for p in d.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


class _NaNModel:
    """Test-only node: the model, cloned, with a UNet wrapper that returns NaN while ``on`` is set.

    The weights are not touched: the wrapper goes into the clone's model_options, which the sampler
    (and training, through calc_cond_batch) honour.
    """

    switch = {"on": True}

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "tag": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, tag):
        m = model.clone()
        switch = self.switch

        def wrapper(apply_model, args):
            out = apply_model(args["input"], args["timestep"], **args["c"])
            return torch.full_like(out, math.nan) if switch["on"] else out

        m.set_model_unet_function_wrapper(wrapper)
        return (m,)


@pytest.fixture
def nan_model(host, monkeypatch):
    """Register the test-only NaN model node; its switch turns the NaN output on and off."""
    monkeypatch.setitem(host.node_class_mappings, "ZoodipTestNaNModel", _NaNModel)
    _NaNModel.switch["on"] = True
    yield _NaNModel.switch
    _NaNModel.switch["on"] = True


def files_under(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}
