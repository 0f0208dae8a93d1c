"""Does the toy model know its concepts? Sample each caption with the host, judge the images.

Done when (issue 10): for every trained concept's caption the judge (classifier.py, trained on all
20 colour x shape combinations) sees that concept in >= 90% of the samples, and for the held-out
concept's own words ("a purple cross", words the model never saw) it mostly does not. "a shape"
(the generic caption the held-out images had) shows how often the model draws the held-out
concept unasked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import classifier, data, model

SAMPLER = {"steps": 20, "cfg": 4.0, "sampler": "euler", "scheduler": "normal"}
TARGET = 0.9
# the judge's training size per toy size (full: classifier.train's defaults, the judge every
# figure uses; smoke: just enough to run every path)
CLASSIFIER: dict[str, dict[str, int]] = {"full": {}, "smoke": {"per_concept": 4, "steps": 30}}


def judged(clf: Any, images: torch.Tensor, concept: tuple[str, str]) -> dict[str, float]:
    """Share of `images` the judge names `concept` (both right), and colour / shape right apart."""
    pc, ps = clf.predict(images)
    c_ok, s_ok = pc == data.COLOUR_NAMES.index(concept[0]), ps == data.SHAPES.index(concept[1])
    return {"accuracy": float((c_ok & s_ok).mean()), "colour_accuracy": float(c_ok.mean()),
            "shape_accuracy": float(s_ok.mean())}


def sample(model_obj: Any, clip: Any, vae: Any, text: str, n: int, seed: int, *, steps: int = 20,
           cfg: float = 4.0, negative: str = "") -> torch.Tensor:
    """n images (n,H,W,3) for `text`, through the host's CLIPTextEncode, KSampler path, VAEDecode.

    The toy VAE is x4, so the latent is 8x8 for 32x32 px (Empty Latent Image would need 64x64).
    """
    import nodes

    pos = nodes.CLIPTextEncode().encode(clip, text)[0]
    neg = nodes.CLIPTextEncode().encode(clip, negative)[0]
    latent = {"samples": torch.zeros((n, 4, 8, 8))}
    out = nodes.common_ksampler(model_obj, seed, steps, cfg, SAMPLER["sampler"], SAMPLER["scheduler"], pos, neg, latent,
                                disable_noise=False)[0]
    return nodes.VAEDecode().decode(vae, out)[0].float().cpu()


def grid(rows: list[torch.Tensor], path: Path, scale: int = 3) -> Path:
    """Rows of (n,H,W,3) images side by side, rows stacked; written as PNG."""
    from PIL import Image

    width = max(r.shape[0] for r in rows)
    h, w = rows[0].shape[1:3]
    canvas = np.ones((len(rows) * (h + 2), width * (w + 2), 3), np.float32)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            canvas[i * (h + 2) : i * (h + 2) + h, j * (w + 2) : j * (w + 2) + w] = im.numpy()
    img = Image.fromarray((canvas.clip(0, 1) * 255).astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST).save(path)
    return path


def load_in_host(host: Any, ckpt: Path, name: str = "zoodip-toy.safetensors") -> tuple[Any, Any, Any]:
    """Link the checkpoint into the host's checkpoints folder and load it with CheckpointLoaderSimple."""
    import nodes

    link = host.model_dir("checkpoints") / name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path(ckpt).resolve())
    return tuple(nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3])  # type: ignore[return-value]


def run(host: Any, ckpt: Path, samples: int, out: Path | None, grid_path: Path | None,
        say: Callable[[str], None] = print, smoke: bool = False, cfg: float | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    model_obj, clip, vae = load_in_host(host, ckpt)
    described = model.describe(ckpt)
    held_out = model.held_out(described["toymodel"])
    say("the judge: trained on all 20 colour x shape combinations (VAE round trip)")
    clf = classifier.cached(vae, **CLASSIFIER["smoke" if smoke else "full"])
    say(f"judge test accuracy {clf.test_accuracy}")
    steps = 4 if smoke else SAMPLER["steps"]
    cfg = SAMPLER["cfg"] if cfg is None else cfg
    rows, per_caption = [], {}
    prompts = [(data.caption(c, s), (c, s), "trained") for c, s in data.concepts(held_out)[:-1]]
    prompts += [(data.caption(*held_out), held_out, "held_out_words"),
                (data.caption(*held_out, form=1), held_out, "held_out_words"),
                (data.GENERIC[0], held_out, "generic")]
    with torch.inference_mode():
        for i, (text, concept, kind) in enumerate(prompts):
            imgs = sample(model_obj, clip, vae, text, samples, seed=100 + i, steps=steps, cfg=cfg)
            pc, ps = clf.predict(imgs)
            seen = {f"{data.COLOUR_NAMES[c]} {data.SHAPES[s]}": int(((pc == c) & (ps == s)).sum())
                    for c, s in sorted(set(zip(pc.tolist(), ps.tolist())))}
            per_caption[text] = {"kind": kind, "concept": " ".join(concept), **judged(clf, imgs, concept), "seen": seen}
            rows.append(imgs[: min(samples, 12)])
            say(f"{text!r}: {per_caption[text]['accuracy']:.0%} {' '.join(concept)}  (seen {seen})")
    trained = [v["accuracy"] for v in per_caption.values() if v["kind"] == "trained"]
    held = [v["accuracy"] for v in per_caption.values() if v["kind"] == "held_out_words"]
    result = {
        **described,
        "held_out": " ".join(held_out),
        "sampler": {**SAMPLER, "steps": steps, "cfg": cfg},
        "samples_per_caption": samples,
        "classifier_test_accuracy": clf.test_accuracy,
        "trained_mean_accuracy": float(np.mean(trained)),
        "trained_min_accuracy": float(np.min(trained)),
        "trained_concepts_at_target": int(sum(a >= TARGET for a in trained)),
        "trained_concepts": len(trained),
        "held_out_words_accuracy": float(np.mean(held)),
        "generic_accuracy": float(np.mean([v["accuracy"] for v in per_caption.values() if v["kind"] == "generic"])),
        "per_caption": per_caption,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    if grid_path is not None:
        grid(rows, grid_path)
        result["grid"] = str(grid_path)
    return result


def table(r: dict[str, Any]) -> str:
    lines = [f"Toy model weights sha256 {r.get('weights_sha256', 'not recorded')}; {r['samples_per_caption']} samples per caption.", "",
             "| caption | concept | judge: both right | colour right | shape right |", "|---|---|---|---|---|"]
    for text, v in r["per_caption"].items():
        lines.append(f"| {text} | {v['concept']} ({v['kind']}) | {v['accuracy']:.0%} | {v['colour_accuracy']:.0%} | {v['shape_accuracy']:.0%} |")
    lines.append(
        f"\ntrained captions: mean {r['trained_mean_accuracy']:.1%}, min {r['trained_min_accuracy']:.1%}, "
        f"{r['trained_concepts_at_target']}/{r['trained_concepts']} at >= {TARGET:.0%}; held-out words: "
        f"{r['held_out_words_accuracy']:.1%}; \"a shape\" draws the held-out concept {r.get('generic_accuracy', float('nan')):.1%}; "
        f"judge on fresh drawn (round-tripped) images: {r['classifier_test_accuracy']['both']:.1%}"
    )
    return "\n".join(lines)
