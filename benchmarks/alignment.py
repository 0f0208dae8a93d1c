"""Gradient alignment: how well one step's estimate points along the loss's expected gradient.

Issue 15's goal 1 asks ZOODiP for first-order TI's fidelity at the same forward budget. This
measures the reason it lags, on the toy model at the token's own points: for the same draw (image,
noise, timestep) at a point theta, the cosine to the expected gradient g_bar (the mean of the exact
gradients over many other draws) of

- TI's step: the exact gradient of that draw (backprop; 3 forward equivalents);
- the ZO estimate from n random directions on that draw (n+1 forwards), for several n;
- that estimate after the Subspace Gradient projection of a ZOODiP run that reached theta.

g_bar is itself an estimate, so two independent halves of its draws are compared too: their
cosine is the instrument's ceiling (near 1: the reference is good; low: every figure is
attenuated). Points: the init word, then along a ZOODiP run at the paper's settings.

    python -m benchmarks.alignment [--size full|smoke] [--held-out purple,triangle] [--out-dir DIR]

Writes alignment.json and alignment.md (benchmarks/results/ by default).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, cosine, loss_gradient, pack, say, write_json
from benchmarks.toymodel import cli as toy_cli

SIZES: dict[str, dict[str, Any]] = {
    # points: ZOODiP steps at which to measure (400 = the fidelity budget of 1200 at n=2)
    "full": {"points": [0, 200, 400], "draws": 16, "reference_draws": 64, "ns": [1, 2, 8, 32], "refs": 4},
    "smoke": {"points": [0, 2], "draws": 2, "reference_draws": 4, "ns": [1, 2], "refs": 2},
}


def measure(
    loss_fn: Callable[[Any, int], Any],
    grad_fn: Callable[[Any, int], Any],
    theta: Any,
    estimator_cls: Any,
    derive_seed: Callable[..., int],
    *,
    ns: Sequence[int],
    mu: float,
    draws: int,
    reference_draws: int,
    seed: int = 0,
    project: Callable[[Any], Any] | None = None,
    project_n: int = 2,
) -> dict[str, Any]:
    """Cosines to the expected gradient at ``theta`` (see the module doc), mean and sd over draws.

    ``loss_fn(thetas (B, *shape), data_seed) -> (B,)`` and ``grad_fn(theta, data_seed)`` are the
    loss and its exact gradient; ``estimator_cls(queries, mu)`` the ZO estimator. The n-direction
    estimates share one draw of max(ns) directions (the first n of them: the estimator draws its
    directions in order from the seed), so they cost max(ns)+1 forwards per draw.
    """
    import torch

    if not ns or min(ns) < 1 or reference_draws < 2 or draws < 1:
        raise ValueError("need ns >= 1, draws >= 1 and reference_draws >= 2")
    half = reference_draws // 2
    refs = [grad_fn(theta, derive_seed(seed, 1 << 20, j)).double() for j in range(2 * half)]
    ref_a, ref_b = torch.stack(refs[:half]).mean(0), torch.stack(refs[half:]).mean(0)
    g_bar = (ref_a + ref_b) / 2
    n_max = max(ns)
    cos: dict[str, list[float]] = {"ti": [], **{f"zo_n{n}": [] for n in ns}}
    if project is not None:
        cos[f"zo_n{project_n}_sg"] = []
    full, each = estimator_cls(n_max, mu), {n: estimator_cls(n, mu) for n in ns}
    for d in range(draws):
        data_seed, dir_seed = derive_seed(seed, d, 2), derive_seed(seed, d, 1)
        cos["ti"].append(cosine(grad_fn(theta, data_seed), g_bar))
        losses = loss_fn(full.queries(theta, dir_seed), data_seed).detach().float().cpu()
        for n in ns:
            g = each[n].estimate(losses[: n + 1], theta, dir_seed)
            cos[f"zo_n{n}"].append(cosine(g, g_bar))
            if project is not None and n == project_n:
                cos[f"zo_n{n}_sg"].append(cosine(project(g), g_bar))
    return {
        "reference_self_cosine": cosine(ref_a, ref_b),
        "gradient_norm": float(g_bar.norm()),
        "cosine": {k: {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0}
                   for k, v in cos.items()},
    }


def run(size: str, held_out: tuple[str, str], out_dir: Path | None, say: Callable[[str], None] = print,
        toy_steps: int | None = None) -> dict[str, Any]:
    import torch

    from benchmarks import fidelity as F
    from benchmarks.toymodel import check, model
    from devtools.host import HeadlessHost

    cfg = SIZES[size]
    zo = F.ZO
    t0 = time.perf_counter()
    result: dict[str, Any] = {"size": size, "zo": zo, "init_word": F.INIT_WORD, "concept": " ".join(held_out),
                              **{k: cfg[k] for k in ("points", "draws", "reference_draws", "ns")}, "points_measured": []}
    with HeadlessHost() as session:
        ckpt = model.cached(size, say=say, held_out=",".join(held_out), steps=toy_steps)
        result.update(model.describe(ckpt))
        pk = pack(session, "nodes.host", "nodes.training", "zoodip.settings", "zoodip.seeds", "zoodip.estimator")
        host, training, S = pk["nodes.host"], pk["nodes.training"], pk["zoodip.settings"]
        derive_seed, Estimator = pk["zoodip.seeds"].derive_seed, pk["zoodip.estimator"].RandomGradientEstimator
        model_obj, clip, vae = check.load_in_host(session, ckpt)
        s = S.TrainSettings(
            token_name="toyconcept", init_word=F.INIT_WORD, num_vectors=1, steps=max(cfg["points"]),
            learning_rate=zo["learning_rate"], queries=zo["queries"], perturbation=zo["perturbation"], seed=0,
            puts=S.PUTSConfig(*zo["puts"]), subspace=S.SubspaceConfig(zo["tau"], zo["nu"]),
            prompt_templates=F.TEMPLATES, query_batch=0,
        )
        with torch.inference_mode():
            r = training.prepare(model_obj, clip, vae, F._images(held_out, cfg["refs"], seed=2000), s)
        result["token_width"] = int(r.trainer.theta.numel())
        for point in cfg["points"]:
            with torch.inference_mode(), host.sampling_session(model_obj, clip):
                while r.trainer.step_count < point:
                    r.trainer.step()
                proj = r.trainer.projector
                m = measure(
                    r.loss_fn, lambda th, ds: loss_gradient(r.loss_fn, th, ds)[1], r.trainer.theta.detach().clone(),
                    Estimator, derive_seed, ns=cfg["ns"], mu=zo["perturbation"], draws=cfg["draws"],
                    reference_draws=cfg["reference_draws"], seed=0xA11 + point,
                    project=proj.project if proj is not None and proj.num_noise_directions else None,
                    project_n=zo["queries"],
                )
            m.update(step=point, sg_noise_directions=0 if proj is None else proj.num_noise_directions)
            result["points_measured"].append(m)
            say(f"step {point}: {m}")
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if out_dir is not None:
        name = "alignment" if size == "full" else f"alignment_{size}"
        write_json(out_dir / f"{name}.json", result)
        (out_dir / f"{name}.md").write_text(table(result) + "\n")
    return result


def table(result: dict[str, Any]) -> str:
    ns, width, q = result["ns"], result.get("token_width", 768), result["zo"]["queries"]
    lines = [
        f"Cosine to the expected gradient (mean ± sd over {result['draws']} draws; reference: "
        f"{result['reference_draws']} draws), toy concept {result['concept']}, token width D = {width}",
        "",
        "| ZOODiP step | reference halves agree | TI step (3 fwd) | "
        + " | ".join(f"ZO n={n} ({n + 1} fwd)" for n in ns) + f" | ZO n={q} + SG | SG noise directions |",
        "|---" * (5 + len(ns)) + "|",
    ]
    for p in result["points_measured"]:
        c = p["cosine"]

        def f(k: str, _c=c) -> str:
            return f"{_c[k]['mean']:.3f} ± {_c[k]['sd']:.3f}" if k in _c else "-"

        lines.append(f"| {p['step']} | {p['reference_self_cosine']:.3f} | {f('ti')} | "
                     + " | ".join(f(f"zo_n{n}") for n in ns) + f" | {f(f'zo_n{q}_sg')} | {p['sg_noise_directions']} |")
    theory = " / ".join(f"n={n}: {math.sqrt(n / (width + n + 1)):.3f}" for n in ns)
    lines += ["", f"Random directions alone (an exact gradient, sqrt(n / (D + n + 1))): {theory}; "
              "ZO's figure is about that times TI's."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=tuple(SIZES), default="full")
    toy_cli.add_toy_arguments(p)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the figures do not depend on it)")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args(argv)
    from benchmarks.toymodel import data

    toy = toy_cli.toy_overrides(p, a)
    held_out = data.parse_held_out(toy["held_out"] or ",".join(data.HELD_OUT))
    if a.threads < 1:
        p.error(f"--threads must be >= 1, got {a.threads}")
    import torch

    torch.set_num_threads(a.threads)
    result = run(a.size, held_out, Path(a.out_dir), say, toy_steps=toy["steps"])
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
