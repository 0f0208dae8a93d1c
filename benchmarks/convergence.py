"""Convergence benchmark: how fast each estimator variant learns, on a problem with a known optimum.

Random weights know no concept, so the loss is the "teacher" loss of ``DenoisingLoss``: the
target is the model's own prediction under a hidden token theta* (a seeded random vector at the
scale of the host's token embeddings), so the loss is exactly 0 at theta* and falls as theta
approaches what theta* does to the model. Everything runs inside a headless ComfyUI on the tiny
random-weight SD1.5 checkpoint (full CLIP-L, a small UNet): the host's text encoder and UNet, its
``model_sampling``, the pack's own ``ZOTrainer`` (estimator -> Subspace projector -> torch.optim.Adam).

Variants are compared at an EQUAL BUDGET OF FORWARD PASSES, counting the token-conditioned
text-encoder + UNet evaluations the step makes (the benchmark counts the rows it evaluates):

- a one-sided ZO step with n queries costs n + 1 (the clean point and n perturbed ones),
- a two-sided step costs 2n (the trainer evaluates no clean point then),
- a first-order TI step (autograd to the token through the host's encoder and UNet, Adam) costs
  1 forward + 1 backward, and the backward is counted as 2 forwards: 3 per step. (benchmarks/
  speed.py measured a TI step at ~2.2 forwards on this CPU, so this accounting is a little
  unfavourable to TI.)

The teacher's own prediction (the target) is not counted: with a real loss the target is the
photo's latent, which costs nothing. It is computed once per draw and cached (the same step of
the same seed draws the same image, template, timestep and noise in every variant). Held-out
evaluations are measurement, not training, and are not counted either.

Timesteps are UNIFORM over [0, 1000) for every variant: PUTS cannot be judged on random weights
(timesteps mean nothing to an untrained model), so this benchmark says nothing about PUTS.

The held-out loss is the engine's ``held_out_loss`` (fixed images, noise, timesteps), evaluated
afterwards on snapshots of the token taken along a common grid of forward passes, in batches.
It is the number the comparison is judged by; the cosine to theta* is reported too.

    python -m benchmarks.convergence                      # the full default run (~20 min, 1 thread)
    python -m benchmarks.convergence --smoke --out X.json  # the CI smoke size (seconds)
    python -m benchmarks.convergence --replot benchmarks/results/convergence.json  # tables + plot again
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, FirstOrderTI, cosine, machine_info, pack, write_json

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "convergence.json"
TEMPLATE = "a photo of a {token}"
INIT_WORD = "dog"  # theta0: the host's embedding of this word
PX = 64
PHOTOS = 4
LR = 5e-3  # the paper's, for ZO and for the TI reference alike
MU = 1e-3  # the paper's perturbation for SD1.5
TI_PASSES_PER_STEP = 3  # 1 forward + 1 backward counted as 2 forwards
PAPER_TAU, PAPER_NU = 128, 1e-3

# The default run: 150 passes is 75 steps at n=1, 50 at n=2, 30 at n=4, 50 TI steps (about
# 20 min of one CPU thread in all). The paper's tau = 128 would never refresh in 50 steps (its
# 30,000-step runs refresh ~230 times), so tau is scaled down to 16 (3 refreshes at n=2) and
# swept around it; nu is the paper's 1e-3, swept upwards (with tau points in 768 dimensions SG
# can only ever remove < tau directions, and a larger nu removes more of them).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "budget": 150, "seeds": 3, "grid": 10, "draws": 4, "tau": 16,
        "variants": ["zo:n=1", "zo:n=2", "zo:n=4", "zo:n=1,two_sided=1", "sg:n=2", "sg:n=2,tau=8",
                     "sg:n=2,tau=32", "sg:n=2,nu=1e-2", "sg:n=2,nu=1e-1", "ti"],
    },
    # CI: every kind of variant, two or three steps each; tau 2 so that SG refreshes
    "smoke": {
        "budget": 6, "seeds": 2, "grid": 2, "draws": 1, "tau": 2,
        "variants": ["zo:n=1", "zo:n=2", "zo:n=1,two_sided=1", "sg:n=2", "sg:n=2,nu=1e-1", "ti"],
    },
}
MATERIAL = 0.05  # a pass ratio within 5% of 1 is called no material difference
REFERENCE = "zo:n=2"  # vanilla ZO at the node's default n: what SG is judged against
SG_MAIN = "sg:n=2"


# --- variants --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """One way of training the token. ``spec`` is how it is written on the command line."""

    spec: str
    kind: str  # "zo" (vanilla), "sg" (ZO + Subspace Gradient) or "ti" (first order)
    n: int = 2
    two_sided: bool = False
    tau: int | None = None
    nu: float | None = None

    @property
    def passes_per_step(self) -> int:
        if self.kind == "ti":
            return TI_PASSES_PER_STEP
        return 2 * self.n if self.two_sided else self.n + 1

    @property
    def label(self) -> str:
        if self.kind == "ti":
            return "first-order TI"
        base = f"{'two-sided' if self.two_sided else 'vanilla'} n={self.n}" if self.kind == "zo" else f"SG n={self.n}"
        if self.kind == "sg":
            base += f"{' two-sided' if self.two_sided else ''} tau={self.tau} nu={self.nu:g}"
        return base


def parse_variant(spec: str, default_tau: int) -> Variant:
    """``kind[:key=value,...]``: kind zo | sg | ti; keys n, two_sided (0/1), tau, nu."""
    kind, _, rest = spec.strip().partition(":")
    if kind not in ("zo", "sg", "ti"):
        raise ValueError(f"variant {spec!r}: the kind must be zo, sg or ti")
    opts: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        k, eq, v = item.partition("=")
        if not eq or k not in ("n", "two_sided", "tau", "nu"):
            raise ValueError(f"variant {spec!r}: expected key=value with key n, two_sided, tau or nu; got {item!r}")
        opts[k] = v
    if kind == "ti":
        if opts:
            raise ValueError(f"variant {spec!r}: ti takes no options")
        return Variant(spec.strip(), "ti", n=0)
    if kind == "zo" and ({"tau", "nu"} & set(opts)):
        raise ValueError(f"variant {spec!r}: tau/nu belong to sg variants")
    v = Variant(spec.strip(), kind, n=int(opts.get("n", 2)), two_sided=opts.get("two_sided", "0") in ("1", "true"))
    if kind == "sg":
        v = replace(v, tau=int(opts.get("tau", default_tau)), nu=float(opts.get("nu", PAPER_NU)))
        if v.tau < 2 or not 0 < v.nu < 1:
            raise ValueError(f"variant {spec!r}: tau must be >= 2 and 0 < nu < 1")
    if v.n < 1:
        raise ValueError(f"variant {spec!r}: n must be >= 1")
    return v


# --- the loss with a cached teacher ----------------------------------------------------------

def teacher_loss_class(DenoisingLoss: type) -> type:
    """``DenoisingLoss`` (the pack's class) whose teacher row is computed once per draw.

    Why: the teacher's prediction is the target, not a query; with the real loss the target is
    free, and every variant of a seed draws the same data at step k, so recomputing it would only
    burn CPU. Rows of token values actually evaluated are counted in ``query_rows``.
    """

    class CachedTeacherLoss(DenoisingLoss):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.query_rows = 0
            self.teacher_rows = 0
            self._cache: dict[tuple, Any] = {}

        def _predict(self, thetas, d, x_t, sigma):  # noqa: ANN001 -- the base class's signature
            import torch

            # __call__ appended the teacher as the last row
            key = (d.image, d.template, d.timestep, d.noise.numpy().tobytes())
            self.query_rows += thetas.shape[0] - 1
            hit = self._cache.get(key)
            if hit is None:
                pred = super()._predict(thetas, d, x_t, sigma)
                self.teacher_rows += 1
                with torch.inference_mode(False):  # a normal tensor: TI's autograd graph may use it
                    self._cache[key] = pred[-1:].detach().clone()
                return pred
            return torch.cat([super()._predict(thetas[:-1], d, x_t, sigma), hit.to(thetas.device)])

    return CachedTeacherLoss


# --- one seed --------------------------------------------------------------------------------

@dataclass
class Trace:
    """One variant on one seed: token snapshots on the grid, and what the step loop saw."""

    variant: Variant
    seed: int
    passes: list[int] = field(default_factory=list)  # passes spent at each snapshot
    thetas: list[Any] = field(default_factory=list)
    rows_evaluated: int = 0  # token-conditioned rows the loss actually evaluated
    steps: int = 0
    train_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    refreshes: int = 0
    noise_directions: list[int] = field(default_factory=list)  # per SG refresh
    grad_norms: list[float] = field(default_factory=list)  # TI only
    held_out: list[float] = field(default_factory=list)
    cosine: list[float] = field(default_factory=list)
    distance: list[float] = field(default_factory=list)  # ||theta - theta*|| / ||theta0 - theta*||


def grid_points(budget: int, grid: int) -> list[int]:
    return sorted({round(budget * i / grid) for i in range(grid + 1)})


def train_variant(v: Variant, seed: int, budget: int, grid: list[int], theta0, loss_fn, pk: dict[str, Any]) -> Trace:
    import torch

    tr = Trace(v, seed)
    cost = v.passes_per_step
    steps = budget // cost
    # snapshot g: the token after the last step that fits in g passes
    at_step = {}
    for g in grid:
        at_step.setdefault(g // cost, []).append(g)
    rows0 = loss_fn.query_rows

    def snap(k: int, theta) -> None:
        if k in at_step:
            tr.passes.append(k * cost)
            tr.thetas.append(theta.detach().clone().float().cpu())

    t0 = time.process_time()
    if v.kind == "ti":
        ti = FirstOrderTI(loss_fn, theta0, pk["zoodip.seeds"].derive_seed, seed=seed, lr=LR)
        snap(0, ti.theta)
        for k in range(1, steps + 1):
            r = ti.step()
            tr.train_loss.append(r["loss"])
            tr.grad_norms.append(r["grad_norm"] if r["grad_norm"] is not None else math.nan)
            snap(k, ti.theta)
    else:
        theta = theta0.clone()
        est = pk["zoodip.estimator"].RandomGradientEstimator(v.n, MU, v.two_sided)
        proj = pk["zoodip.projector"].SubspaceProjector(v.tau, v.nu) if v.kind == "sg" else None
        trainer = pk["zoodip.trainer"].ZOTrainer(theta, loss_fn, est, pk["zoodip.optim"].paper_adam(theta, lr=LR), proj, seed=seed)
        snap(0, theta)
        with torch.inference_mode():
            for k in range(1, steps + 1):
                before = proj.refreshes if proj is not None else 0
                r = trainer.step()
                if proj is not None and proj.refreshes != before:
                    tr.noise_directions.append(proj.num_noise_directions)
                tr.train_loss.append(r.loss)
                snap(k, theta)
        tr.refreshes = proj.refreshes if proj is not None else 0
    tr.seconds = time.process_time() - t0
    tr.steps = steps
    tr.rows_evaluated = loss_fn.query_rows - rows0
    return tr


def run_seed(session, variants: list[Variant], seed: int, cfg: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    import torch

    import nodes
    from devtools.assets import cached_sd15_checkpoint, make_photos

    pk = pack(session, "nodes.host", "nodes.training", "zoodip.loss", "zoodip.estimator", "zoodip.optim",
              "zoodip.trainer", "zoodip.settings", "zoodip.seeds", "zoodip.projector")
    host, training = pk["nodes.host"], pk["nodes.training"]
    settings_mod, derive_seed = pk["zoodip.settings"], pk["zoodip.seeds"].derive_seed
    ckpt = "zoodip-convergence-tiny.safetensors"
    link = session.model_dir("checkpoints") / ckpt
    if not link.exists():
        link.symlink_to(cached_sd15_checkpoint("tiny", seed=0))
    if not (session.input_dir / "convergence").exists():
        make_photos(session.input_dir / "convergence", n=PHOTOS, size=PX, seed=0)
    model, clip, vae = _loaded(nodes, ckpt)
    images = nodes.NODE_CLASS_MAPPINGS["ZOODiPLoadImages"]().load("convergence", PX)[0]
    # puts=None: uniform timesteps (PUTS is not judged here, see the module docstring)
    settings = settings_mod.TrainSettings(token_name="convergence", init_word=INIT_WORD, queries=2, perturbation=MU,
                                          learning_rate=LR, seed=seed, puts=None, prompt_templates=TEMPLATE)
    with torch.inference_mode():
        run = training.prepare(model, clip, vae, images, settings)
    base = run.loss_fn
    theta0 = run.trainer.theta.detach().clone()
    # theta*: random at the scale of the host's token embeddings (the init word's spread)
    g = torch.Generator().manual_seed(derive_seed(seed, 0x7EAC4E5))
    theta_star = (theta0.float().std() * torch.randn(theta0.shape, generator=g)).to(theta0)
    Loss = teacher_loss_class(pk["zoodip.loss"].DenoisingLoss)
    loss_fn = Loss(base.latents, base.encode, base.denoise, base.sampling, base.num_templates, base.timesteps,
                   teacher=theta_star)
    held_seed = derive_seed(seed, 0xE7A1)  # as nodes/training.py's Run.held_out
    grid = grid_points(cfg["budget"], cfg["grid"])
    out: dict[str, Any] = {"seed": seed, "traces": []}
    with host.sampling_session(model, clip):
        with torch.inference_mode():
            # the setup's checks, with the engine's own (uncached) teacher loss and held_out_loss
            plain = pk["zoodip.loss"].DenoisingLoss(base.latents, base.encode, base.denoise, base.sampling,
                                                    base.num_templates, base.timesteps, teacher=theta_star)
            held_out_loss = pk["zoodip.loss"].held_out_loss
            out["held_out_at_theta_star"] = held_out_loss(plain, theta_star, held_seed, cfg["draws"])
            out["held_out_at_theta0_engine"] = held_out_loss(plain, theta0, held_seed, cfg["draws"])
        out["theta_star_norm"] = float(theta_star.norm())
        out["theta0_norm"] = float(theta0.norm())
        out["theta0_cosine_to_theta_star"] = cosine(theta0, theta_star)
        for v in variants:
            tr = train_variant(v, seed, cfg["budget"], grid, theta0, loss_fn, pk)
            say(f"[seed {seed}] {v.label}: {tr.steps} steps, {tr.rows_evaluated} rows, {tr.seconds:.1f} s cpu"
                + (f", SG refreshes {tr.refreshes} removing {tr.noise_directions} directions" if v.kind == "sg" else ""))
            out["traces"].append(tr)
        t0 = time.process_time()
        _evaluate(out["traces"], loss_fn, held_seed, cfg["draws"], theta0, theta_star, derive_seed)
        out["held_out_seconds"] = time.process_time() - t0
    out["held_out_at_theta0_batched"] = out["traces"][0].held_out[0]
    out["teacher_rows"] = loss_fn.teacher_rows
    return out


_MODELS: dict[str, tuple] = {}


def _loaded(nodes, ckpt: str) -> tuple:
    # load once per process: the host's loader is the slow part of the setup
    if ckpt not in _MODELS:
        _MODELS[ckpt] = tuple(nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)[:3])
    return _MODELS[ckpt]


def _evaluate(traces: list[Trace], loss_fn, seed: int, draws: int, theta0, theta_star, derive_seed) -> None:
    """Held-out loss of every snapshot: per fixed draw, all distinct snapshots in one batched call.

    The same draws as ``zoodip.loss.held_out_loss(loss_fn, theta, seed, draws)``.
    """
    import torch

    unique: dict[bytes, int] = {}
    rows = []
    for tr in traces:
        for th in tr.thetas:
            key = th.numpy().tobytes()
            if key not in unique:
                unique[key] = len(rows)
                rows.append(th)
    batch = torch.stack(rows).to(theta0)
    total = torch.zeros(len(rows), dtype=torch.float64)
    saved = loss_fn.max_batch
    loss_fn.max_batch = 32  # chunks keep the text encoder's activations small
    try:
        with torch.inference_mode():
            for i in range(draws):
                total += loss_fn(batch, derive_seed(seed, 0x5EED, i)).double()
    finally:
        loss_fn.max_batch = saved
    mean = (total / draws).tolist()
    d0 = float((theta0.float().cpu() - theta_star.float().cpu()).norm())
    for tr in traces:
        tr.held_out = [mean[unique[th.numpy().tobytes()]] for th in tr.thetas]
        tr.cosine = [cosine(th, theta_star.float().cpu()) for th in tr.thetas]
        tr.distance = [float((th - theta_star.float().cpu()).norm()) / d0 for th in tr.thetas]


# --- summary ---------------------------------------------------------------------------------

def first_reach(passes: list[float], losses: list[float], target: float) -> float | None:
    """Forward passes at which the curve first gets to ``target`` (linear between snapshots)."""
    for i, (p, v) in enumerate(zip(passes, losses)):
        if v <= target:
            if i == 0:
                return float(p)
            p0, v0 = passes[i - 1], losses[i - 1]
            return float(p0 + (v0 - target) / (v0 - v) * (p - p0))
    return None


def _stats(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs)}


def summarize(variants: list[Variant], seeds: list[dict[str, Any]], budget: int) -> dict[str, Any]:
    by: dict[str, list[Trace]] = {v.spec: [] for v in variants}
    for s in seeds:
        for tr in s["traces"]:
            by[tr.variant.spec].append(tr)
    ref = by.get(REFERENCE)
    rows: dict[str, Any] = {}
    ref_curve = None
    if ref:
        ref_curve = [statistics.fmean(x) for x in zip(*(t.held_out for t in ref))]
    for v in variants:
        trs = by[v.spec]
        curve = [statistics.fmean(x) for x in zip(*(t.held_out for t in trs))]
        passes = trs[0].passes
        row: dict[str, Any] = {
            "label": v.label, "kind": v.kind, "n": v.n, "two_sided": v.two_sided, "tau": v.tau, "nu": v.nu,
            "passes_per_step": v.passes_per_step, "steps": trs[0].steps,
            "forward_passes": trs[0].steps * v.passes_per_step,
            "rows_evaluated": [t.rows_evaluated for t in trs],
            "final_held_out": _stats([t.held_out[-1] for t in trs]),
            "final_over_initial": _stats([t.held_out[-1] / t.held_out[0] for t in trs]),
            "final_cosine_to_theta_star": _stats([t.cosine[-1] for t in trs]),
            "final_distance_ratio": _stats([t.distance[-1] for t in trs]),
            "curve": {"passes": passes, "held_out_mean": curve,
                      "held_out_min": [min(x) for x in zip(*(t.held_out for t in trs))],
                      "held_out_max": [max(x) for x in zip(*(t.held_out for t in trs))],
                      "cosine_mean": [statistics.fmean(x) for x in zip(*(t.cosine for t in trs))]},
            "cpu_seconds": sum(t.seconds for t in trs),
        }
        if v.kind == "sg":
            row["sg_refreshes"] = [t.refreshes for t in trs]
            row["sg_noise_directions"] = [t.noise_directions for t in trs]
        if v.kind == "ti":
            row["grad_norm_positive"] = all(g > 0 for t in trs for g in t.grad_norms)
        if ref_curve is not None:
            # "first reach" for the reference too: its held-out curve is not monotone, so it may
            # touch its own final value before the budget; comparing first reaches is like for like
            target = ref_curve[-1]
            ref_hit = first_reach(ref[0].passes, ref_curve, target)
            hit = first_reach(passes, curve, target)
            row["passes_to_reference_final"] = hit
            row["reference_passes_to_own_final"] = ref_hit
            row["ratio_to_reference"] = None if hit is None or not ref_hit else hit / ref_hit
            per_seed = []
            for t, r in zip(trs, ref):  # paired: the same theta*, draws and directions per seed
                h = first_reach(t.passes, t.held_out, r.held_out[-1])
                rh = first_reach(r.passes, r.held_out, r.held_out[-1])
                # "n/a": that seed's vanilla ended no lower than it started, there is nothing to reach
                per_seed.append("not reached" if h is None else "n/a" if not rh else h / rh)
            row["ratio_per_seed"] = per_seed
            row["final_vs_reference"] = curve[-1] / target
        rows[v.spec] = row
    return {"reference": REFERENCE, "variants": rows, "verdict": verdict(rows, budget)}


def verdict(rows: dict[str, Any], budget: int) -> str:
    if REFERENCE not in rows or SG_MAIN not in rows:
        return f"(no verdict: the run needs both {REFERENCE!r} and {SG_MAIN!r})"
    ref, sg = rows[REFERENCE], rows[SG_MAIN]
    target = ref["curve"]["held_out_mean"][-1]
    ref_hit, hit, ratio = sg["reference_passes_to_own_final"], sg["passes_to_reference_final"], sg["ratio_to_reference"]
    seeds = sg["ratio_per_seed"]
    per_seed = ", ".join(r if isinstance(r, str) else f"{r:.2f}" for r in seeds)
    nums = [r for r in seeds if not isinstance(r, str)]
    fewer = sum(1 for r in nums if r < 1 - MATERIAL)
    more = sum(1 for r in nums if r > 1 + MATERIAL) + seeds.count("not reached")
    where = (f"vanilla ZO ({ref['label']})'s final held-out loss {target:.4g} (mean over seeds; vanilla itself first "
             f"reaches it after {ref_hit:.1f} of {budget} forward passes)")
    if ratio is None:
        head = f"NO: {sg['label']} does not reach {where} within the budget"
    else:
        how = f"{100 * abs(1 - ratio):.1f}% {'fewer' if ratio < 1 else 'more'}"
        # snapshots are budget/grid passes apart and the curves are interpolated between them:
        # a few percent either way is not a finding
        word = ("NOT MATERIALLY" if abs(1 - ratio) < MATERIAL else "YES") if ratio < 1 else "NO"
        head = f"{word}: {sg['label']} reaches {where} after {hit:.1f} passes, {ratio:.3f}x vanilla's ({how})"
        if abs(1 - ratio) < MATERIAL:
            head += f", within the {100 * MATERIAL:.0f}% this benchmark resolves"
    return (f"{head}. At the budget SG's held-out loss is {sg['final_vs_reference']:.3f}x vanilla's. Per seed (paired: "
            f"same theta*, draws and directions), SG's passes / vanilla's to reach that seed's vanilla final: {per_seed} "
            f"({fewer} of {len(seeds)} seeds over {100 * MATERIAL:.0f}% fewer, {more} over {100 * MATERIAL:.0f}% more or "
            "not reached).")


# --- report ----------------------------------------------------------------------------------

def table(result: dict[str, Any]) -> str:
    c, s = result["settings"], result["summary"]
    m = result.get("machine", {})
    lines = [
        f"ZOODiP convergence: tiny SD1.5 (random weights), teacher loss, {c['seeds']} seeds, budget {c['budget']} forward "
        f"passes per run; torch {m.get('torch', '?')}, {m.get('torch_threads', '?')} thread(s), ComfyUI {m.get('comfyui', '?')}",
        "timesteps UNIFORM for every variant (PUTS cannot be judged on random weights); lr 5e-3, mu 1e-3; passes: "
        "one-sided n+1, two-sided 2n, TI 3 (backward counted as 2 forwards); teacher target and held-out not counted",
        f"held-out loss: {c['draws']} fixed draws; at theta0 {result['held_out_at_theta0']['mean']:.4g} (mean over seeds), "
        f"at theta* {result['held_out_at_theta_star_max']:.3g} (max over seeds; it must be 0)",
        "",
        "| variant | steps | final held-out (mean +- std) | min - max | final / initial | cosine to theta* | "
        f"passes to first reach {s['variants'].get(REFERENCE, {}).get('label', REFERENCE)}'s final (/ its own) | "
        "per seed (paired) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in s["variants"].values():
        f, fo, co = r["final_held_out"], r["final_over_initial"], r["final_cosine_to_theta_star"]
        hit, ratio = r.get("passes_to_reference_final"), r.get("ratio_to_reference")
        reach = "not reached" if hit is None else f"{hit:.1f} ({'-' if ratio is None else f'{ratio:.2f}x'})"
        per = " ".join(("never" if x == "not reached" else x) if isinstance(x, str) else f"{x:.2f}" for x in r.get("ratio_per_seed", []))
        lines.append(f"| {r['label']} | {r['steps']} | {f['mean']:.4g} +- {f['std']:.2g} | {f['min']:.4g} - {f['max']:.4g} | "
                     f"{fo['mean']:.3f} | {co['mean']:+.3f} ({co['min']:+.3f} .. {co['max']:+.3f}) | {reach} | {per} |")
    sg = [r for r in s["variants"].values() if r["kind"] == "sg"]
    if sg:
        lines.append("")
        lines.append("SG diagnostics (directions removed per refresh, out of 768; seed 0): " + "; ".join(
            f"{r['label']}: {r['sg_noise_directions'][0]}" for r in sg))
    lines += ["", "Verdict: " + s["verdict"]]
    return "\n".join(lines)


def curves_table(result: dict[str, Any], key: str = "held_out_mean", fmt: str = ".4g") -> str:
    """A mean curve of each variant on the grid of forward passes (markdown)."""
    vs = result["summary"]["variants"]
    grid = result["settings"]["grid_points"]
    lines = ["| variant | " + " | ".join(str(g) for g in grid) + " |", "|---|" + "---|" * len(grid)]
    for r in vs.values():
        lines.append(f"| {r['label']} | " + " | ".join(format(x, fmt) for x in r["curve"][key]) + " |")
    return "\n".join(lines)


COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0)]


def plot(result: dict[str, Any], path: Path) -> None:
    """Mean held-out loss (log scale) vs forward passes: main variants on top, SG sweeps below."""
    from PIL import Image, ImageDraw, ImageFont

    from zoodip.plot import _fmt, _ticks  # the pack's PIL plotter's tick helpers (host-free module)

    vs = result["summary"]["variants"]
    main = [k for k, r in vs.items() if not (r["kind"] == "sg" and k != SG_MAIN)]
    sweeps = [k for k, r in vs.items() if r["kind"] == "sg" or k == REFERENCE]
    panels = [("held-out teacher loss (log scale) vs forward passes, mean over seeds; uniform timesteps", main),
              ("SG tau / nu sweeps (n=2) vs vanilla n=2: held-out teacher loss (log scale), mean over seeds", sweeps)]
    W, H = 1100, 900
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    color = {k: COLORS[i % len(COLORS)] for i, k in enumerate(vs)}
    budget = result["settings"]["budget"]
    ph = H // len(panels)
    for p, (title, keys) in enumerate(panels):
        # each panel its own log range: the sweeps differ far less than TI and ZO do
        ys = [x for k in keys for x in vs[k]["curve"]["held_out_mean"] if x > 0 and math.isfinite(x)]
        lo, hi = math.log10(min(ys)), math.log10(max(ys))
        lo, hi = lo - 0.05 * (hi - lo or 1), hi + 0.05 * (hi - lo or 1)
        left, right, top, bottom = 70, W - 290, p * ph + 34, (p + 1) * ph - 44
        d.text((left, p * ph + 10), title, fill=(0, 0, 0), font=font)
        d.line([(left, top), (left, bottom), (right, bottom)], fill=(0, 0, 0))

        def xy(x: float, y: float, left: int = left, right: int = right, top: int = top, bottom: int = bottom,
               lo: float = lo, hi: float = hi) -> tuple[float, float]:
            return (left + (right - left) * x / budget, bottom - (bottom - top) * (math.log10(y) - lo) / (hi - lo))

        if hi - lo > 0.5:  # decades: 1-2-5 marks; a narrow range: the linear plotter's nice ticks
            ticks = [m * 10.0**e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)]
        else:
            ticks = _ticks(10**lo, 10**hi, 6)
        for y in ticks:
            if y > 0 and lo <= math.log10(y) <= hi:
                _, yy = xy(0, y)
                d.line([(left, yy), (right, yy)], fill=(232, 232, 232))
                d.text((5, yy - 6), _fmt(y), fill=(60, 60, 60), font=font)
        for i in range(7):
            x = budget * i / 6
            xx, _ = xy(x, 10**lo)
            d.line([(xx, bottom), (xx, bottom + 4)], fill=(0, 0, 0))
            d.text((xx - 8, bottom + 8), f"{x:.0f}", fill=(60, 60, 60), font=font)
        d.text(((left + right) // 2 - 40, bottom + 24), "forward passes", fill=(0, 0, 0), font=font)
        ref_final = vs[REFERENCE]["curve"]["held_out_mean"][-1] if REFERENCE in vs else None
        if ref_final:
            _, yy = xy(0, ref_final)
            for x0 in range(left, right, 8):
                d.line([(x0, yy), (x0 + 4, yy)], fill=(120, 120, 120))
        for j, k in enumerate(keys):
            r = vs[k]
            pts = [xy(x, y) for x, y in zip(r["curve"]["passes"], r["curve"]["held_out_mean"]) if y > 0]
            wide = 3 if k in (REFERENCE, SG_MAIN) else 2
            if len(pts) > 1:
                d.line(pts, fill=color[k], width=wide)
            for x, y in pts:
                d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color[k])
            ly = top + 6 + 16 * j
            d.line([(right + 14, ly + 6), (right + 38, ly + 6)], fill=color[k], width=wide)
            d.text((right + 44, ly), r["label"], fill=(0, 0, 0), font=font)
        if ref_final:
            ly = top + 6 + 16 * len(keys)
            d.line([(right + 14, ly + 6), (right + 18, ly + 6)], fill=(120, 120, 120))
            d.line([(right + 24, ly + 6), (right + 28, ly + 6)], fill=(120, 120, 120))
            d.text((right + 44, ly), "vanilla n=2's final", fill=(0, 0, 0), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def check(cfg: dict[str, Any]) -> list[Variant]:
    """The variants, or ValueError before any work."""
    variants = [parse_variant(s, cfg["tau"]) for s in cfg["variants"]]
    if len({v.spec for v in variants}) != len(variants):
        raise ValueError("a variant is listed twice")
    costs = sorted({v.passes_per_step for v in variants})
    if any(cfg["budget"] % c for c in costs):
        raise ValueError(f"the budget {cfg['budget']} must be a multiple of every variant's passes per step {costs}, "
                         "so that every variant spends exactly the same number of forward passes")
    return variants


def run(cfg: dict[str, Any], out: Path | None, plot_path: Path | None, *, threads: int = 1, quiet: bool = False) -> dict[str, Any]:
    import torch

    from devtools.host_path import import_host

    say: Callable[[str], None] = (lambda _s: None) if quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    if threads > 0:
        torch.set_num_threads(threads)
    import_host()  # the headless host runs on the CPU
    from devtools.host import HeadlessHost

    variants = check(cfg)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "zoodip-convergence",
        "version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": ("python -m benchmarks.convergence " + " ".join(sys.argv[1:])).strip()
        if sys.argv and sys.argv[0].endswith("convergence.py") else None,
        "settings": {
            **{k: cfg[k] for k in ("preset", "budget", "seeds", "grid", "draws", "tau")},
            "grid_points": grid_points(cfg["budget"], cfg["grid"]),
            "variants": [asdict(v) | {"label": v.label, "passes_per_step": v.passes_per_step} for v in variants],
            "checkpoint": "devtools.assets.cached_sd15_checkpoint('tiny', seed=0)",
            "image_px": PX, "photos": PHOTOS, "template": TEMPLATE, "init_word": INIT_WORD,
            "theta_star": "N(0, std(theta0)^2) per coordinate, seeded per seed",
            "learning_rate": LR, "perturbation": MU, "paper_tau": PAPER_TAU, "paper_nu": PAPER_NU,
            "timesteps": "uniform [0, 1000) for every variant (PUTS is not judged on random weights)",
            "pass_accounting": "one-sided ZO n+1, two-sided 2n, first-order TI 3 (1 forward + backward counted as 2); "
                               "the teacher target and held-out evaluations are not counted",
            "reference": REFERENCE, "sg_main": SG_MAIN,
        },
    }
    with contextlib.suppress(OSError):
        result["load_average_start"] = list(os.getloadavg())
    seeds = []
    with HeadlessHost() as session:
        for seed in range(cfg["seeds"]):
            seeds.append(run_seed(session, variants, seed, cfg, say))
        result["machine"] = machine_info(session, "cpu")
    result["seeds"] = [
        {k: v for k, v in s.items() if k != "traces"}
        | {"traces": {tr.variant.spec: {"passes": tr.passes, "held_out": tr.held_out, "cosine": tr.cosine,
                                        "distance_ratio": tr.distance, "steps": tr.steps,
                                        "rows_evaluated": tr.rows_evaluated, "cpu_seconds": round(tr.seconds, 2),
                                        "train_loss": tr.train_loss, "sg_refreshes": tr.refreshes,
                                        "sg_noise_directions": tr.noise_directions}
                       for tr in s["traces"]}}
        for s in seeds
    ]
    result["held_out_at_theta0"] = _stats([s["held_out_at_theta0_engine"] for s in seeds])
    result["held_out_at_theta_star_max"] = max(abs(s["held_out_at_theta_star"]) for s in seeds)
    result["summary"] = summarize(variants, seeds, cfg["budget"])
    with contextlib.suppress(OSError):
        result["load_average_end"] = list(os.getloadavg())
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["cpu_seconds"] = round(time.process_time(), 1)
    if plot_path is not None:
        plot(result, plot_path)
        result["plot"] = str(plot_path.relative_to(ROOT)) if plot_path.is_relative_to(ROOT) else str(plot_path)
    if out is not None:
        write_json(out, result)
    return result


def report(result: dict[str, Any]) -> None:
    print(table(result))
    print("\nmean held-out loss on the grid of forward passes:\n" + curves_table(result))
    print("\nmean cosine to theta* on the same grid:\n" + curves_table(result, "cosine_mean", "+.3f"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.convergence", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="the CI size: tiny budget, 2 seeds, a subset of variants")
    p.add_argument("--budget", type=int, help="forward passes per run (a multiple of every variant's passes per step)")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 (each: its own theta*, draws and directions)")
    p.add_argument("--grid", type=int, help="held-out snapshots: the budget split in this many intervals")
    p.add_argument("--draws", type=int, help="fixed draws of the held-out loss")
    p.add_argument("--tau", type=int, help="tau of sg variants that do not set one")
    p.add_argument("--variants", help="comma-free list separated by ';', e.g. 'zo:n=2;sg:n=2,tau=8;ti'")
    p.add_argument("--out", default=None, help=f"JSON results (default: {DEFAULT_OUT.relative_to(ROOT)}; "
                   "for --smoke none unless given); '' for none")
    p.add_argument("--plot", default=None, help="PNG plot (default: the JSON's path with .png); '' for none")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; the machine is shared)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--replot", metavar="JSON", help="no run: print the tables of a results file and redraw its plot")
    opts = p.parse_args(argv)
    if opts.replot:
        result = json.loads(Path(opts.replot).read_text(encoding="utf-8"))
        plot(result, Path(opts.plot) if opts.plot else Path(opts.replot).with_suffix(".png"))
        report(result)
        return 0
    preset = "smoke" if opts.smoke else "default"
    cfg = dict(PRESETS[preset], preset=preset)
    for k in ("budget", "seeds", "grid", "draws", "tau"):
        if getattr(opts, k) is not None:
            cfg[k] = getattr(opts, k)
    if opts.variants:
        cfg["variants"] = [s for s in opts.variants.split(";") if s.strip()]
    if cfg["seeds"] < 1 or cfg["budget"] < 1 or cfg["grid"] < 1 or cfg["draws"] < 1:
        p.error("--budget, --seeds, --grid and --draws must be >= 1")
    if opts.out is None:
        out = None if opts.smoke else DEFAULT_OUT
    else:
        out = Path(opts.out) if opts.out else None
    if opts.plot is None:
        plot_path = out.with_suffix(".png") if out is not None else None
    else:
        plot_path = Path(opts.plot) if opts.plot else None
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        check(cfg)
    except ValueError as e:
        p.error(str(e))
    result = run(cfg, out, plot_path, threads=opts.threads, quiet=opts.quiet)
    report(result)
    if out is not None:
        print(f"\nwrote {out}" + (f" and {plot_path}" if plot_path is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
