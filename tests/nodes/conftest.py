"""Fixtures for tests that run the pack inside the real host: a tiny SD1.5 checkpoint, photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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


def files_under(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}
