"""A small CNN that names the colour and the shape of a toy image (plain torch, seconds).

It is trained on the synthetic set *as the toy VAE returns it* (encode, decode: the blur a
sampled image also has), with pixel noise, so that it judges samples by what they show, not by
how sharp they are. It has never seen a caption: it only knows the 5 colours and 4 shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from . import data


class ShapeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.colour = nn.Linear(256, len(data.COLOUR_NAMES))
        self.shape = nn.Linear(256, len(data.SHAPES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.colour(h), self.shape(h)


@dataclass
class Classifier:
    net: ShapeNet
    test_accuracy: dict[str, float]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """images B,H,W,3 in 0..1 -> (colour index, shape index) per image."""
        self.net.eval()
        x = images.detach().float().permute(0, 3, 1, 2).contiguous()
        c, s = self.net(x)
        return c.argmax(1).numpy(), s.argmax(1).numpy()

    def is_concept(self, images: torch.Tensor, concept: tuple[str, str]) -> np.ndarray:
        c, s = self.predict(images)
        return (c == data.COLOUR_NAMES.index(concept[0])) & (s == data.SHAPES.index(concept[1]))


def roundtrip(vae: Any, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """uint8 N,H,W,3 through the VAE (encode, decode): N,H,W,3 float in 0..1."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i : i + batch].astype(np.float32) / 255.0)
            out.append(vae.decode(vae.encode(x)).float()[..., :3].cpu())
    return torch.cat(out)


def train(vae: Any, px: int = 32, per_concept: int = 32, steps: int = 1500, seed: int = 1000) -> Classifier:
    """Train on a fresh set (seed != the toy model's), test on another one.

    1500 steps: at 400 the shapes were still at 66% (colours at 100%) on the test set.
    """
    torch.manual_seed(seed)
    tr = data.make_set(per_concept, px, seed)
    te = data.make_set(max(4, per_concept // 4), px, seed + 1)
    x, xt = roundtrip(vae, tr.images), roundtrip(vae, te.images)
    yc, ys = torch.from_numpy(tr.colour), torch.from_numpy(tr.shape)
    net = ShapeNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        xb = x[idx].permute(0, 3, 1, 2)
        xb = (xb + 0.05 * torch.randn(xb.shape, generator=gen)).clamp(0, 1)  # samples are never exact
        c, s = net(xb)
        loss = nn.functional.cross_entropy(c, yc[idx]) + nn.functional.cross_entropy(s, ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf = Classifier(net, {})
    pc, ps = clf.predict(xt)
    clf.test_accuracy = {
        "colour": float((pc == te.colour).mean()),
        "shape": float((ps == te.shape).mean()),
        "both": float(((pc == te.colour) & (ps == te.shape)).mean()),
        "n": int(len(te)),
    }
    return clf


def cached(vae: Any, key: str, **kwargs: Any) -> Classifier:
    """train(vae, **kwargs), stored beside the toy checkpoints under `key` (its file name + settings)."""
    import hashlib
    import json

    from .model import cache_dir

    tag = hashlib.sha256(json.dumps({"key": key, **kwargs}, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / f"classifier-{tag}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        net = ShapeNet()
        net.load_state_dict(saved["net"])
        return Classifier(net, {k: float(v) for k, v in saved["test_accuracy"].items()})
    clf = train(vae, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"net": clf.net.state_dict(), "test_accuracy": clf.test_accuracy}, tmp)
    tmp.replace(path)
    return clf
