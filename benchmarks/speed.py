"""Speed benchmark: what a ZOODiP step costs next to its forward passes and next to first-order TI.

Everything runs in one process, inside a headless ComfyUI (the real host loads the checkpoints
with its own loader and picks the device), on random-weight SD1.5 checkpoints of two sizes:
"tiny" (the smallest UNet the host still detects as SD1.5, with the full CLIP-L; 64x64 px) and
"full" (the real SD1.5 shapes; 512x512 px). For each size it measures:

- forward: one text-encoder call and one UNet call at batch 1, the calls the loss makes per query;
- ZOODiP steps (``ZOTrainer.step``) for n = 1, 2, 4 queries, batched (one text-encoder call and
  one UNet call per step, which the host may split by its free-memory estimate) and unbatched
  (``DenoisingLoss(max_batch=1)``: n+1 calls of each);
- a first-order textual-inversion step: the token as a leaf tensor requiring grad, the same loss
  through the host's text encoder and UNet, backward to the token only, Adam step.

Cases are interleaved (a rotating order per round) after a warm-up, and medians over the rounds
are reported. Each case is timed on two clocks: wall time, and the process's CPU time. On a
shared CPU machine the wall time moves with other people's load while one thread's CPU time
does not, so on the CPU the benchmark runs torch on one thread and judges the ratios on CPU time
(``--clock``/``--threads`` change this); on a GPU it uses wall time with the device synchronized.

    python -m benchmarks.speed [--sizes tiny,full] [--repeats N] [--out benchmarks/results/speed.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, FirstOrderTI, machine_info, pack, write_json

# px: image side; repeats: timed rounds; photos: reference images (how many does not change a
# step's cost, only the one-off VAE encoding); warmup: every case once ("all"), or "peak": the
# forward, the largest batched step and the TI step once, so that the process has touched its
# peak memory before timing (first-touch page faults would otherwise be billed to the first
# large case; they cost seconds at 512 px).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"px": 64, "repeats": 5, "photos": 4, "warmup": "all"},
    "full": {"px": 512, "repeats": 1, "photos": 1, "warmup": "peak"},
}
QUERIES = (1, 2, 4)
MODES = ("batched", "unbatched")
DEFAULT_STEPS = 30_000  # the Train Token node's defaults (the paper's run length)
DEFAULT_QUERIES = 2
TARGET_STEP_OVER_FORWARDS = 1.05  # step(n) <= 1.05 x (n+1) x forward
TARGET_N1_OVER_TI = 0.4  # step(n=1) <= 0.4 x first-order TI step
TEMPLATE = "a photo of a {token}"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "speed.json"
CLOCKS = ("wall", "cpu")


# --- clocks ----------------------------------------------------------------------------------

def _synchronize(device) -> None:
    """Wait for the device's queued work (CUDA and friends run asynchronously; the CPU does not)."""
    kind = getattr(device, "type", "cpu")
    if kind != "cpu":
        import torch

        backend = getattr(torch, kind, None)
        if backend is not None and hasattr(backend, "synchronize"):
            backend.synchronize()


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _user_sys() -> tuple[float, float]:
    """The process's user and kernel CPU seconds (kernel time is mostly page faults of big tensors)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return math.nan, math.nan
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


class Stopwatch:
    """Wall and process-CPU seconds of a block (CPU split into user and kernel), the device
    synchronized at both ends."""

    def __init__(self, device) -> None:
        self.device = device
        self.wall = self.cpu = self.user = self.sys = 0.0

    def __enter__(self) -> Stopwatch:
        _synchronize(self.device)
        self._us = _user_sys()
        self._w, self._c = _now()
        return self

    def __exit__(self, *exc: object) -> None:
        _synchronize(self.device)
        w, c = _now()
        u, k = _user_sys()
        self.wall, self.cpu = w - self._w, c - self._c
        self.user, self.sys = u - self._us[0], k - self._us[1]


@dataclass
class ModuleClock:
    """Time spent inside some modules' forwards (the text encoder, the UNet) and their batch sizes."""

    device: Any
    wall: float = 0.0
    cpu: float = 0.0
    calls: dict[str, list[int]] = field(default_factory=dict)
    _handles: list = field(default_factory=list)
    _start: dict[str, tuple[float, float]] = field(default_factory=dict)

    def watch(self, name: str, module) -> None:
        self.calls.setdefault(name, [])

        def pre(_m, args, kwargs):
            x = kwargs.get("embeds")  # the text model gets embeddings; the UNet gets x first
            if x is None:
                x = args[0] if args else kwargs.get("x")
            self.calls[name].append(int(x.shape[0]) if hasattr(x, "shape") else -1)
            _synchronize(self.device)
            self._start[name] = _now()

        def post(_m, _args, _kwargs, _out):
            _synchronize(self.device)
            w, c = _now()
            w0, c0 = self._start.pop(name)
            self.wall += w - w0
            self.cpu += c - c0

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post, with_kwargs=True))

    def reset(self) -> None:
        self.wall = self.cpu = 0.0
        for v in self.calls.values():
            v.clear()

    def snapshot(self) -> dict[str, Any]:
        return {"model_wall": self.wall, "model_cpu": self.cpu, "calls": {k: list(v) for k, v in self.calls.items()}}

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@dataclass
class Case:
    name: str
    run: Callable[[], dict[str, Any] | None]  # one repetition; may return extra numbers
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    cpu_sys: list[float] = field(default_factory=list)  # the kernel's share of cpu
    extras: list[dict[str, Any]] = field(default_factory=list)


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --- the first-order baseline ----------------------------------------------------------------

# --- one model size --------------------------------------------------------------------------

def bench_size(session, size: str, repeats: int, say: Callable[[str], None]) -> dict[str, Any]:
    import torch

    import nodes
    from devtools.assets import cached_sd15_checkpoint, make_photos

    cfg = SIZES[size]
    px = cfg["px"]
    t_setup = time.perf_counter()
    ckpt = f"zoodip-bench-{size}.safetensors"
    link = session.model_dir("checkpoints") / ckpt
    if not link.exists():
        say(f"[{size}] random SD1.5 checkpoint (built once, cached under .cache/devtools)")
        link.symlink_to(cached_sd15_checkpoint(size, seed=0))
    folder = f"bench-{size}"
    if not (session.input_dir / folder).exists():
        make_photos(session.input_dir / folder, n=cfg["photos"], size=px, seed=0)

    # the pack as the host loaded it (custom_nodes/<pack>), not a second copy from the repo
    pk = pack(session, "nodes.host", "nodes.training", "zoodip.loss", "zoodip.estimator", "zoodip.optim",
              "zoodip.trainer", "zoodip.settings", "zoodip.seeds")
    host, training = pk["nodes.host"], pk["nodes.training"]
    DenoisingLoss = pk["zoodip.loss"].DenoisingLoss
    RandomGradientEstimator = pk["zoodip.estimator"].RandomGradientEstimator
    paper_adam, ZOTrainer = pk["zoodip.optim"].paper_adam, pk["zoodip.trainer"].ZOTrainer
    settings_mod, derive_seed = pk["zoodip.settings"], pk["zoodip.seeds"].derive_seed

    say(f"[{size}] loading the checkpoint with the host's CheckpointLoaderSimple")
    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)[:3]
    images = nodes.NODE_CLASS_MAPPINGS["ZOODiPLoadImages"]().load(folder, px)[0]
    settings = settings_mod.TrainSettings(
        token_name="bench", init_word="dog", num_vectors=1, steps=DEFAULT_STEPS, queries=DEFAULT_QUERIES,
        puts=settings_mod.PUTSConfig(500, 900), prompt_templates=TEMPLATE,
    )
    with torch.inference_mode():  # as the executor runs nodes
        say(f"[{size}] encoding {images.shape[0]} reference image(s), once")
        run = training.prepare(model, clip, vae, images, settings)
    device = model.load_device  # the device the host chose for the model
    base = run.loss_fn

    def loss_with(max_batch: int | None):
        return DenoisingLoss(base.latents, base.encode, base.denoise, base.sampling, base.num_templates,
                             base.timesteps, max_batch=max_batch)

    losses = {"batched": loss_with(None), "unbatched": loss_with(1)}
    theta0 = run.trainer.theta.detach().clone()

    def trainer(n: int, mode: str):
        theta = theta0.clone()
        return ZOTrainer(theta, losses[mode], RandomGradientEstimator(n, settings.perturbation),
                         paper_adam(theta, lr=settings.learning_rate), None, seed=settings.seed)

    clock = ModuleClock(device)
    for key in run.family.encoders:
        clock.watch("text_encoder", getattr(clip.cond_stage_model, f"clip_{key}").transformer)
    clock.watch("unet", model.model.diffusion_model)

    # forward: what one query costs, the two host calls of the loss, on the draw of step 0
    draw = base.draw(derive_seed(settings.seed, 0, 2))
    with torch.inference_mode():
        x0 = base.latents[draw.image : draw.image + 1].float()
        sigma = base.sampling.sigma(torch.tensor([draw.timestep], device=x0.device)).to(device=x0.device, dtype=torch.float32)
        x_t = base.sampling.noise_scaling(sigma, draw.noise.to(x0.device), x0)
    one = theta0.unsqueeze(0)

    def forward() -> dict[str, Any]:
        with torch.inference_mode():
            with Stopwatch(device) as te:
                cond = base.encode(one, draw.template)
            with Stopwatch(device) as unet:
                base.denoise(x_t, sigma, cond)
        return {"text_encoder_wall": te.wall, "text_encoder_cpu": te.cpu, "unet_wall": unet.wall, "unet_cpu": unet.cpu}

    def zo_step(tr) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            with torch.inference_mode():
                r = tr.step()
            return {"loss": r.loss}

        return go

    ti = FirstOrderTI(losses["batched"], theta0, derive_seed, seed=settings.seed, lr=settings.learning_rate)
    cases = [Case("forward", forward)]
    cases += [Case(f"step_n{n}_{mode}", zo_step(trainer(n, mode))) for n in QUERIES for mode in MODES]
    cases.append(Case("ti_step", ti.step))

    def once(case: Case) -> tuple[Stopwatch, dict[str, Any]]:
        clock.reset()
        with Stopwatch(device) as sw:
            extra = case.run() or {}
        return sw, {**extra, **clock.snapshot()}

    try:
        with host.sampling_session(model, clip):
            setup_seconds = time.perf_counter() - t_setup
            peak = {"forward", f"step_n{max(QUERIES)}_batched", "ti_step"}
            warm = cases if cfg["warmup"] == "all" else [c for c in cases if c.name in peak]
            for case in warm:
                sw, _ = once(case)
                say(f"[{size}] warm-up {case.name}: {sw.wall:.3f} s wall, {sw.cpu:.3f} s cpu ({sw.sys:.3f} kernel)")
            for r in range(repeats):
                shift = r % len(cases)
                for case in cases[shift:] + cases[:shift]:
                    sw, extra = once(case)
                    case.wall.append(sw.wall)
                    case.cpu.append(sw.cpu)
                    case.cpu_sys.append(sw.sys)
                    case.extras.append(extra)
                    say(f"[{size}] round {r + 1}/{repeats} {case.name}: {sw.wall:.3f} s wall, {sw.cpu:.3f} s cpu ({sw.sys:.3f} kernel)")
    finally:
        clock.close()

    grad_norms = [e.get("grad_norm") for e in cases[-1].extras]
    if not grad_norms or not all(g is not None and g > 0 and g == g for g in grad_norms):
        raise RuntimeError(f"the first-order TI baseline got no gradient on the token (grad norms {grad_norms})")
    info = {"px": px, "repeats": repeats, "warmup": cfg["warmup"], "photos": int(images.shape[0]),
            "latent": list(base.latents.shape[1:]), "device": str(device), "setup_seconds": setup_seconds}
    return summarize(size, info, cases)


def summarize(size: str, info: dict[str, Any], cases: list[Case]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in cases:
        e: dict[str, Any] = {}
        for clk in CLOCKS:
            times = getattr(c, clk)
            model = [x[f"model_{clk}"] for x in c.extras]
            e[clk] = {
                "seconds": [round(t, 6) for t in times],
                "median": _median(times),
                # time the text encoder and UNet forwards took inside the case
                "model_median": _median(model),
                # the rest: Python, tokens, conditioning, the loss arithmetic, estimator and Adam
                # (for the TI step it also holds the backward pass)
                "outside_forwards_fraction": _median([(t - m) / t for t, m in zip(times, model) if t > 0]),
            }
            if clk == "cpu":
                e[clk]["kernel_seconds"] = [round(t, 6) for t in c.cpu_sys]
            if c.name == "forward":
                e[clk]["text_encoder_median"] = _median([x[f"text_encoder_{clk}"] for x in c.extras])
                e[clk]["unet_median"] = _median([x[f"unet_{clk}"] for x in c.extras])
        calls = c.extras[-1]["calls"] if c.extras else {}
        e["forward_calls"] = {k: len(v) for k, v in calls.items()}  # per repetition
        e["forward_batch_sizes"] = calls
        if c.name == "ti_step":
            e["grad_norms"] = [x.get("grad_norm") for x in c.extras]
        out[c.name] = e

    ratios: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    for clk in CLOCKS:
        med = {name: e[clk]["median"] for name, e in out.items()}
        fwd, ti = med["forward"], med["ti_step"]
        r: dict[str, float] = {}
        for n in QUERIES:
            for mode in MODES:
                r[f"step_n{n}_{mode}_over_forwards"] = med[f"step_n{n}_{mode}"] / ((n + 1) * fwd)
        r["ti_step_over_forward"] = ti / fwd
        for mode in MODES:
            r[f"step_n1_{mode}_over_ti_step"] = med[f"step_n1_{mode}"] / ti
        ratios[clk] = r
        t = {f"step_n{n}_le_{TARGET_STEP_OVER_FORWARDS}x_forwards": r[f"step_n{n}_batched_over_forwards"] <= TARGET_STEP_OVER_FORWARDS
             for n in QUERIES}
        t[f"step_n1_le_{TARGET_N1_OVER_TI}x_ti_step"] = r["step_n1_batched_over_ti_step"] <= TARGET_N1_OVER_TI
        targets[clk] = t
    default = {}
    for clk in CLOCKS:
        s = out[f"step_n{DEFAULT_QUERIES}_batched"][clk]["median"]
        default[clk] = {"step_seconds": s, "iterations_per_second": 1 / s, "hours_per_token": DEFAULT_STEPS * s / 3600,
                        "tokens_per_hour": 3600 / (DEFAULT_STEPS * s)}
    return {
        "size": size,
        "image_px": info["px"],
        "latent_shape": info["latent"],
        "device": info["device"],
        "repeats": info["repeats"],
        "warmup": info["warmup"],
        "reference_images": info["photos"],
        "setup_seconds": round(info["setup_seconds"], 3),
        "cases": out,
        "ratios": ratios,
        "targets": targets,
        "default_run": {"steps": DEFAULT_STEPS, "queries": DEFAULT_QUERIES, "mode": "batched", **default},
    }


# --- report ----------------------------------------------------------------------------------

def _kernel_share(cases: dict[str, Any], names: list[str]) -> float:
    kernel = sum(sum(cases[x]["cpu"]["kernel_seconds"]) for x in names)
    return 100 * kernel / max(sum(sum(cases[x]["cpu"]["seconds"]) for x in names), 1e-12)


def table(result: dict[str, Any]) -> str:
    m, clk = result["machine"], result["clock"]
    other = "wall" if clk == "cpu" else "cpu"
    lines = [
        f"ZOODiP speed: {m['device']} ({m.get('cuda_device') or m.get('cpu', '')}), torch {m['torch']}, "
        f"{m['torch_threads']} thread(s), ComfyUI {m.get('comfyui', '?')}",
        f"medians of interleaved rounds, on {clk} time ({other} time in the JSON); "
        "ratio = step / ((n+1) x forward); outside = share of the step spent outside the text-encoder and UNet forwards",
    ]
    for size, r in result["sizes"].items():
        c, q = r["cases"], r["ratios"][clk]
        f = c["forward"][clk]
        lines += [
            "",
            f"{size}: {r['image_px']}x{r['image_px']} px (latent {'x'.join(map(str, r['latent_shape']))}), "
            f"{r['repeats']} round(s) after warm-up ({r['warmup']})",
            f"  forward, batch 1       {f['median']:8.3f} s  (text encoder {f['text_encoder_median']:.3f} s + UNet {f['unet_median']:.3f} s)",
            "  n  passes |  batched s  ratio  outside  calls | unbatched s  ratio  calls",
        ]
        for n in QUERIES:
            b, u = c[f"step_n{n}_batched"], c[f"step_n{n}_unbatched"]
            lines.append(
                f"  {n}  {n + 1:6d} | {b[clk]['median']:10.3f}  {q[f'step_n{n}_batched_over_forwards']:5.2f}"
                f"  {100 * b[clk]['outside_forwards_fraction']:6.2f}%  {b['forward_calls'].get('unet', 0):5d}"
                f" | {u[clk]['median']:11.3f}  {q[f'step_n{n}_unbatched_over_forwards']:5.2f}  {u['forward_calls'].get('unet', 0):5d}"
            )
        lines.append(
            f"  first-order TI step    {c['ti_step'][clk]['median']:8.3f} s  = {q['ti_step_over_forward']:.2f} x forward;"
            f"  step(n=1) / TI step = {q['step_n1_batched_over_ti_step']:.2f} (unbatched {q['step_n1_unbatched_over_ti_step']:.2f})"
        )
        d = r["default_run"][clk]
        lines.append(
            f"  default run (n={r['default_run']['queries']}, {r['default_run']['steps']} steps, batched): "
            f"{d['iterations_per_second']:.2f} it/s, {d['hours_per_token']:.2f} h per token = {d['tokens_per_hour']:.3g} tokens/h"
        )
        if clk == "cpu":
            steps = {m: [f"step_n{n}_{m}" for n in QUERIES] for m in MODES}
            lines.append(
                f"  kernel (page-fault) share of cpu time: forward {_kernel_share(c, ['forward']):.0f}%, batched steps "
                f"{_kernel_share(c, steps['batched']):.0f}%, unbatched steps {_kernel_share(c, steps['unbatched']):.0f}%, "
                f"TI {_kernel_share(c, ['ti_step']):.0f}%"
            )
        met = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r["targets"][clk].items())
        lines.append(f"  targets ({clk} time): {met}")
    return "\n".join(lines)


def run(sizes: list[str], repeats: int | None, out: Path | None, *, device: str = "auto", threads: int = 1,
        clock: str = "auto", quiet: bool = False) -> dict[str, Any]:
    import torch

    from devtools.host_path import import_host

    say: Callable[[str], None] = (lambda _s: None) if quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    if threads > 0:
        torch.set_num_threads(threads)
    import_host()  # forces the CPU (the headless host's default) unless told otherwise below
    if device == "auto" and torch.cuda.is_available():
        # Let the host pick its device as the app does without --cpu. model_management reads
        # args.cpu once, at import: import it now, before the headless host sets args.cpu again.
        # (Without a GPU the host itself needs --cpu, so the CPU stays forced then.)
        from comfy.cli_args import args

        args.cpu = False
    import comfy.model_management  # noqa: F401  -- fixes the device choice now

    from devtools.host import HeadlessHost

    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "zoodip-speed",
        "version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.speed " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("speed.py") else None,
        "settings": {
            "queries": list(QUERIES),
            "perturbation": 1e-3,
            "num_vectors": 1,
            "template": TEMPLATE,
            "timesteps": "PUTS [500, 900)",
            "default_run": {"steps": DEFAULT_STEPS, "queries": DEFAULT_QUERIES},
            "targets": {"step_over_forwards": TARGET_STEP_OVER_FORWARDS, "n1_step_over_ti_step": TARGET_N1_OVER_TI},
        },
        "sizes": {},
    }
    with contextlib.suppress(OSError):
        result["load_average_start"] = list(os.getloadavg())
    with HeadlessHost() as session:
        for size in sizes:
            n = repeats if repeats is not None else SIZES[size]["repeats"]
            result["sizes"][size] = bench_size(session, size, n, say)
        dev = next(iter(result["sizes"].values()))["device"] if result["sizes"] else "cpu"
        result["machine"] = machine_info(session, dev)
    result["clock"] = clock if clock != "auto" else ("cpu" if dev == "cpu" else "wall")
    with contextlib.suppress(OSError):
        result["load_average_end"] = list(os.getloadavg())
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    if out is not None:
        write_json(out, result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny,full", help="comma-separated, of: tiny, full (default: both)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds per size (default: " + ", ".join(f"{k} {v['repeats']}" for k, v in SIZES.items()) + ")")
    p.add_argument("--out", default=str(DEFAULT_OUT.relative_to(ROOT)), help="JSON results (default: %(default)s); '' for none")
    p.add_argument("--device", choices=("auto", "cpu"), default="auto",
                   help="auto: the device the host picks (CUDA when there is one); cpu: force the CPU")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: one thread's CPU time ignores other people's load; 0 = torch's default)")
    p.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                   help="the clock the table and targets use (auto: cpu on the CPU, wall on a GPU); JSON has both")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    opts = p.parse_args(argv)
    sizes = [s.strip() for s in opts.sizes.split(",") if s.strip()]
    if not sizes or any(s not in SIZES for s in sizes):
        p.error(f"--sizes takes {', '.join(SIZES)}; got {opts.sizes!r}")
    if opts.repeats is not None and opts.repeats < 1:
        p.error("--repeats must be at least 1")
    if opts.threads < 0:
        p.error("--threads must be >= 0")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    out = Path(opts.out) if opts.out else None
    result = run(sizes, opts.repeats, out, device=opts.device, threads=opts.threads, clock=opts.clock, quiet=opts.quiet)
    print(table(result))
    if out is not None:
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
