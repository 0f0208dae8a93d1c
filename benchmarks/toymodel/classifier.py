"""The judge: a small CNN that names the colour and the shape of a toy image (plain torch, a minute).

It is a measuring instrument, not the model: it is trained on every colour x shape combination
(all 20, the held-out concept and the combinations no toy image has included), so that colour
and shape are independent in what it learns. (Version 1 saw only the toy set's 13 concepts, where
purple occurs only in crosses: it learned "purple means cross", called purple squares crosses and
red crosses circles, so its "purple cross" accuracy counted purple samples.) Images are drawn,
sent *through the toy VAE* (encode, decode: the blur a sampled image also has) and jittered (pixel
noise, extra blur, brightness), so that it judges samples by what they show, not by how sharp they
are. It has never seen a caption.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks._common import torch_threads

from . import data
from . import vae as vae_module


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


# Bump when the judge's data or training changes (part of its cache key).
VERSION = "2"
# torch threads the judge trains with, whatever the caller set: its weights depend on the count (a
# small judge trained at 1 and at 2 threads got other weights and other test scores); part of its
# cache key
THREADS = 1


def _jitter(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Samples are never exact: pixel noise; for half the batch a [1 2 1] blur; brightness +-5%."""
    b = xb.shape[0]
    k1 = torch.tensor([1.0, 2.0, 1.0])
    k = (torch.outer(k1, k1) / 16.0).expand(3, 1, 3, 3)
    blurred = nn.functional.conv2d(nn.functional.pad(xb, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    pick = (torch.rand(b, 1, 1, 1, generator=gen) < 0.5).float()
    xb = pick * blurred + (1 - pick) * xb
    xb = xb * (1 + 0.05 * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1))
    return (xb + 0.05 * torch.randn(xb.shape, generator=gen)).clamp(0, 1)


def through_vae(vae: Any, images: np.ndarray, host_vae: bool = False) -> torch.Tensor:
    """uint8 N,H,W,3 as the toy VAE returns them: by default its closed form (toymodel.vae.roundtrip,
    equal to the host's round trip within 1e-3 and ~1000x cheaper on a CPU); host_vae=True sends
    them through `vae`, the host's VAE object."""
    if host_vae:
        return roundtrip(vae, images)
    return vae_module.roundtrip(torch.from_numpy(images.astype(np.float32) / 255.0))


def train(vae: Any, px: int = 32, per_concept: int = 48, steps: int = 2000, seed: int = 1000,
          host_vae: bool = False) -> Classifier:
    """The judge every benchmark uses (defaults): trained on all 20 colour x shape combinations
    (seed != the toy model's), tested on a fresh draw of each; images through the toy VAE
    (see through_vae). Trained with THREADS torch threads (the caller's are restored after)."""
    with torch_threads(THREADS):
        return _train(vae, px, per_concept, steps, seed, host_vae)


def _train(vae: Any, px: int, per_concept: int, steps: int, seed: int, host_vae: bool) -> Classifier:
    torch.manual_seed(seed)
    tr = data.make_set(per_concept, px, seed, concepts=data.ALL_CONCEPTS)
    te = data.make_set(max(4, per_concept // 4), px, seed + 1, concepts=data.ALL_CONCEPTS)
    x, xt = through_vae(vae, tr.images, host_vae), through_vae(vae, te.images, host_vae)
    yc, ys = torch.from_numpy(tr.colour), torch.from_numpy(tr.shape)
    net = ShapeNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        c, s = net(_jitter(x[idx].permute(0, 3, 1, 2), gen))
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


def per_combination(clf: Classifier, vae: Any, per_concept: int = 100, px: int = 32, seed: int = 4000,
                    host_vae: bool = False) -> dict[str, dict[str, float]]:
    """Each of the 20 combinations freshly drawn (a seed neither training nor test used), through
    the VAE: the share named right (colour and shape), colour right, shape right, and what it was
    called most often when wrong."""
    s = data.make_set(per_concept, px, seed, concepts=data.ALL_CONCEPTS)
    pc, ps = clf.predict(through_vae(vae, s.images, host_vae))
    out = {}
    for colour, shape in data.ALL_CONCEPTS:
        m = (s.colour == data.COLOUR_NAMES.index(colour)) & (s.shape == data.SHAPES.index(shape))
        c_ok, s_ok = pc[m] == s.colour[m], ps[m] == s.shape[m]
        wrong = [f"{data.COLOUR_NAMES[a]} {data.SHAPES[b]}" for a, b, ok in zip(pc[m], ps[m], c_ok & s_ok) if not ok]
        out[f"{colour} {shape}"] = {
            "both": float((c_ok & s_ok).mean()), "colour": float(c_ok.mean()), "shape": float(s_ok.mean()),
            "n": int(m.sum()), "most_common_error": max(set(wrong), key=wrong.count) if wrong else None,
        }
    return out


def cached(vae: Any, key: str = "judge", **kwargs: Any) -> Classifier:
    """train(vae, **kwargs), stored in the toy model cache under its settings (the VAE is constructed,
    the same for every toy model; `key` only separates callers that want separate copies)."""
    import hashlib
    import json

    from .model import cache_dir
    from .vae import VERSION as VAE_VERSION

    blob = {"key": key, "judge": VERSION, "vae": VAE_VERSION, "threads": THREADS, **kwargs}
    tag = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]
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
