"""Fidelity benchmark: learn the toy model's held-out concept with ZOODiP and its ablations vs TI.

The toy model (benchmarks/toymodel) can draw a purple cross but no caption word asks for one.
From 4 images of it, a one-vector token is trained through the pack's own training code
(``nodes.training.prepare`` / ``train``, what the Train Token node runs) with

- ``zoodip``: SG + PUTS (the paper's method), ``sg``: SG only, ``puts``: PUTS only, ``vanilla``:
  plain zeroth-order (RGE + Adam, uniform timesteps), and
- ``ti``: first-order textual inversion (backprop to the token through the host's text encoder and
  UNet, Adam), on the same loss object and the same per-step draws,

at an equal budget of forward passes (ZO: n+1 per step; TI: 1 per step, its backward is extra,
so TI gets n+1 times as many steps), for several seeds. Each token is judged by

- the classifier (benchmarks/toymodel/classifier.py): share of images sampled with
  "a photo of a <token>" that show a purple cross;
- the held-out denoising loss on 8 *other* purple-cross images (fixed draws over all timesteps)
  with the token, against the concept's own words, the init word's caption and a wrong caption.

    python benchmarks/fidelity.py [--size full|smoke] [--budget 600] [--seeds 0,1,2] [--methods ...]

Writes benchmarks/results/fidelity.json, fidelity.md and fidelity_samples.png.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("zoodip", "vanilla", "ti", "sg", "puts")  # the headline comparison first
LABELS = {"zoodip": "ZOODiP (SG+PUTS)", "sg": "ZO +SG", "puts": "ZO +PUTS", "vanilla": "ZO vanilla", "ti": "first-order TI"}
TEMPLATES = "a photo of a {token}\na {token}"
PROMPT = "a photo of a {token}"
INIT_WORD = "shape"  # the class word of this toy world (its generic caption is "a shape")
WRONG = "a photo of a red circle"

# size -> toy checkpoint, budget (forward passes), seeds, samples per token, sampler steps, eval draws
SIZES: dict[str, dict[str, Any]] = {
    "full": {"budget": 300, "seeds": [0, 1, 2], "samples": 16, "sampler_steps": 20, "draws": 32,
             "refs": 4, "held_out_images": 8},
    "smoke": {"budget": 6, "seeds": [0, 1], "samples": 2, "sampler_steps": 2, "draws": 2,
              "refs": 3, "held_out_images": 2},
}
# the engine's settings for every ZO method (the paper's SD1.5 values; tau is shortened so SG
# acts several times within the short budget)
ZO = {"queries": 2, "perturbation": 1e-3, "learning_rate": 5e-3, "tau": 32, "nu": 1e-3, "puts": (500, 900)}
TI_LR = 5e-3


def _pack(session) -> dict[str, Any]:
    name = session.pack_module.__name__
    mods = ("nodes.host", "nodes.training", "zoodip.loss", "zoodip.settings", "zoodip.seeds", "zoodip.timesteps")
    return {m.split(".")[-1]: importlib.import_module(f"{name}.{m}") for m in mods}


def _images(concept: tuple[str, str], n: int, seed: int) -> Any:
    import torch

    from benchmarks.toymodel import data

    s = data.make_set(n, 32, seed, concepts=(concept,))
    return torch.from_numpy(s.floats())


class CaptionEncoder:
    """``encode`` for DenoisingLoss that ignores theta: the conditioning of a fixed caption."""

    def __init__(self, clip, text: str) -> None:
        z, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        self.z, self.pooled = z.float(), pooled

    def __call__(self, thetas, template: int) -> dict:
        b = thetas.shape[0]
        pooled = None if self.pooled is None else self.pooled.expand(b, *self.pooled.shape[1:])
        return {"cross_attn": self.z.expand(b, *self.z.shape[1:]), "pooled_output": pooled}


def run(size: str, budget: int | None, seeds: list[int] | None, methods: list[str], out_dir: Path | None,
        say: Callable[[str], None] = print) -> dict[str, Any]:
    import torch

    from benchmarks.toymodel import check, classifier, data, model
    from devtools.host import HeadlessHost

    cfg = dict(SIZES[size])
    budget = budget or cfg["budget"]
    seeds = seeds if seeds is not None else cfg["seeds"]
    nq = ZO["queries"]
    if budget % (nq + 1):
        raise ValueError(f"the budget must be a multiple of {nq + 1} (forward passes per ZO step)")
    t_start = time.perf_counter()
    ckpt = model.cached(size, say=say)
    result: dict[str, Any] = {"size": size, "checkpoint": ckpt.name, "toymodel": model.info(ckpt), "budget_forwards": budget,
                              "seeds": seeds, "zo": ZO, "ti_lr": TI_LR, "templates": TEMPLATES.split("\n"), "prompt": PROMPT,
                              "init_word": INIT_WORD, "concept": " ".join(data.HELD_OUT), "runs": [], "baselines": {}}
    with HeadlessHost() as session:
        pk = _pack(session)
        host, training, S = pk["host"], pk["training"], pk["settings"]
        DenoisingLoss, held_out_loss = pk["loss"].DenoisingLoss, pk["loss"].held_out_loss
        derive_seed, PUTSSampler = pk["seeds"].derive_seed, pk["timesteps"].PUTSSampler
        from benchmarks.speed import FirstOrderTI

        model_obj, clip, vae = check.load_in_host(session, ckpt)
        say("classifier")
        clf = classifier.cached(vae, ckpt.name, **check.CLASSIFIER[size])  # the one check.py trained
        result["classifier_test_accuracy"] = clf.test_accuracy
        refs = _images(data.HELD_OUT, cfg["refs"], seed=2000)
        held = _images(data.HELD_OUT, cfg["held_out_images"], seed=3000)
        samples_n, sampler_steps = cfg["samples"], cfg["sampler_steps"]

        with torch.inference_mode():
            held_latents = host.encode_references(model_obj, vae, held)
        uniform = PUTSSampler.uniform(1000)
        eval_seed = 0xF1DE

        def eval_loss(encode) -> float:
            fn = DenoisingLoss(held_latents, encode, host.HostDenoiser(model_obj), model_obj.get_model_object("model_sampling"), 1, uniform)
            with torch.inference_mode(), host.sampling_session(model_obj, clip):
                return held_out_loss(fn, torch.zeros(1, 768), eval_seed, cfg["draws"])

        def judge(text: str, clip_obj) -> tuple[float, Any]:
            with torch.inference_mode():
                imgs = check.sample(model_obj, clip_obj, vae, text, samples_n, seed=500, steps=sampler_steps)
            return float(clf.is_concept(imgs, data.HELD_OUT).mean()), imgs

        rows: list[tuple[str, Any]] = []
        for key, text in (("concept_words", "a photo of a purple cross"), ("init_word", f"a photo of a {INIT_WORD}"), ("wrong_caption", WRONG)):
            acc, imgs = judge(text, clip)
            result["baselines"][key] = {"text": text, "accuracy": acc, "held_out_loss": eval_loss(CaptionEncoder(clip, text))}
            rows.append((text, imgs))
            say(f"baseline {key}: {result['baselines'][key]}")

        for method in methods:
            for seed in seeds:
                t0 = time.perf_counter()
                zo = method != "ti"
                s = S.TrainSettings(
                    token_name="toyconcept", init_word=INIT_WORD, num_vectors=1, steps=budget // (nq + 1) if zo else budget,
                    learning_rate=ZO["learning_rate"], queries=nq, perturbation=ZO["perturbation"], seed=seed,
                    puts=S.PUTSConfig(*ZO["puts"]) if method in ("zoodip", "puts") else None,
                    subspace=S.SubspaceConfig(ZO["tau"], ZO["nu"]) if method in ("zoodip", "sg") else None,
                    prompt_templates=TEMPLATES, query_batch=0,
                )
                with torch.inference_mode():
                    r = training.prepare(model_obj, clip, vae, refs, s)
                    if zo:
                        training.train(r)
                        theta = r.trainer.theta.detach().clone()
                        history = list(r.history.loss)
                    else:
                        ti = FirstOrderTI(torch, r.loss_fn, r.trainer.theta.detach().clone(), derive_seed, seed=seed, lr=TI_LR)
                        history = []
                        with host.sampling_session(model_obj, clip):
                            for _ in range(budget):
                                history.append(ti.step()["loss"])
                        theta = ti.theta.detach().clone()
                forwards = r.loss_fn.evaluations
                train_seconds = time.perf_counter() - t0
                emb = {"toyconcept": {"l": theta.float().cpu()}}
                tok_clip = host.clip_with_embeddings(clip, emb)
                acc, imgs = judge(PROMPT.replace("{token}", "embedding:toyconcept"), tok_clip)
                text_enc = host.TokenTextEncoder(clip, r.family, [PROMPT], 1)
                fixed = theta.detach()

                def token_encode(thetas, template, _enc=text_enc, _t=fixed):
                    return _enc(_t.unsqueeze(0).expand(thetas.shape[0], *_t.shape), 0)

                loss = eval_loss(token_encode)
                rec = {"method": method, "seed": seed, "steps": len(history), "forwards": forwards, "accuracy": acc,
                       "held_out_loss": loss, "train_loss_first10": _mean(history[:10]), "train_loss_last10": _mean(history[-10:]),
                       "token_norm": float(theta.norm()), "train_seconds": round(train_seconds, 1)}
                result["runs"].append(rec)
                if seed == seeds[0]:
                    rows.append((LABELS[method], imgs))
                say(f"{method} seed {seed}: {rec}")
                if out_dir is not None:  # partial results survive an interrupted run
                    out_dir.mkdir(parents=True, exist_ok=True)
                    (out_dir / f"fidelity{_suffix(size)}.partial.json").write_text(json.dumps(result, indent=1))
        result["summary"] = summarize(result)
        result["seconds"] = round(time.perf_counter() - t_start, 1)
        result["grid_rows"] = [name for name, _ in rows]  # the sample grid's rows, top to bottom (8 samples each)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            suffix = _suffix(size)
            (out_dir / f"fidelity{suffix}.json").write_text(json.dumps(result, indent=1))
            (out_dir / f"fidelity{suffix}.md").write_text(table(result) + "\n")
            check.grid([imgs[:8] for _, imgs in rows], out_dir / f"fidelity_samples{suffix}.png")
            (out_dir / f"fidelity{suffix}.partial.json").unlink(missing_ok=True)
    return result


def _suffix(size: str) -> str:
    return "" if size == "full" else f"_{size}"


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return float(sum(xs) / len(xs)) if xs else math.nan


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    out = {}
    by: dict[str, list[dict[str, Any]]] = {}
    for r in result["runs"]:
        by.setdefault(r["method"], []).append(r)
    words = result["baselines"]["concept_words"]["held_out_loss"]
    wrong = result["baselines"]["wrong_caption"]["held_out_loss"]
    for m, rs in by.items():
        acc = [r["accuracy"] for r in rs]
        loss = [r["held_out_loss"] for r in rs]
        out[m] = {
            "accuracy_mean": statistics.fmean(acc), "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "held_out_loss_mean": statistics.fmean(loss), "held_out_loss_sd": statistics.stdev(loss) if len(loss) > 1 else 0.0,
            # how much of the gap between the wrong caption and the concept's words the token closes (>0: better than the words)
            "loss_gap_vs_words": words - statistics.fmean(loss), "loss_gap_vs_wrong": wrong - statistics.fmean(loss),
            "forwards": sorted({r["forwards"] for r in rs}), "steps": sorted({r["steps"] for r in rs}),
            "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in rs),
        }
    return out


def table(result: dict[str, Any]) -> str:
    b = result["baselines"]
    lines = [
        f"Held-out concept: {result['concept']}; {result['budget_forwards']} forward passes per run; seeds {result['seeds']}; "
        f"classifier test accuracy {result['classifier_test_accuracy']['both']:.0%}.",
        "",
        "| method | steps | classifier: concept (mean ± sd) | held-out loss (mean ± sd) | loss vs concept words | loss vs wrong caption | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, s in result["summary"].items():
        lines.append(
            f"| {LABELS.get(m, m)} | {','.join(map(str, s['steps']))} | {s['accuracy_mean']:.0%} ± {s['accuracy_sd']:.0%} | "
            f"{s['held_out_loss_mean']:.4f} ± {s['held_out_loss_sd']:.4f} | {s['loss_gap_vs_words']:+.4f} | {s['loss_gap_vs_wrong']:+.4f} | "
            f"{s['train_seconds_mean']:.0f} |"
        )
    lines += ["", "| caption (no training) | classifier: concept | held-out loss |", "|---|---|---|"]
    for key in ("concept_words", "init_word", "wrong_caption"):
        lines.append(f"| {b[key]['text']} ({key.replace('_', ' ')}) | {b[key]['accuracy']:.0%} | {b[key]['held_out_loss']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=tuple(SIZES), default="full")
    p.add_argument("--budget", type=int, default=None, help="forward passes per run (multiple of n+1)")
    p.add_argument("--seeds", default=None, help="comma-separated, e.g. 0,1,2")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--from-partial", metavar="JSON", help="summarize an interrupted run's .partial.json (no sampling, no grid)")
    a = p.parse_args(argv)
    if a.from_partial:
        part = Path(a.from_partial)
        result = json.loads(part.read_text())
        result["summary"] = summarize(result)
        result["partial"] = True  # some methods or seeds may be missing
        out = part.with_name(part.name.replace(".partial.json", ".json"))
        out.write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(table(result) + "\n")
        print(table(result))
        return 0
    import torch

    torch.set_num_threads(a.threads)
    methods = [m for m in a.methods.split(",") if m]
    bad = set(methods) - set(METHODS)
    if bad:
        p.error(f"unknown methods {sorted(bad)}; choose from {METHODS}")
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else None

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    result = run(a.size, a.budget, seeds, methods, Path(a.out_dir), say)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
