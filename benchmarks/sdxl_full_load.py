"""One-off run (not CI): a full-size SDXL checkpoint loaded once by CheckpointLoaderSimple, then
ZOODiP training steps on it with the paper's SDXL settings.

1. Builds ``sdxl-full-s<seed>-float16-v1.safetensors`` (the SDXL base 1.0 architecture, seeded
   random weights, about 6.9 GB, written tensor by tensor) in the asset cache, on first use only
   (``devtools.assets.cached_sdxl_checkpoint``; ``--cache-dir`` or $ZOODIP_ASSET_CACHE moves it).
2. Starts a headless host with the file linked into its models/checkpoints and loads it ONCE
   with the core CheckpointLoaderSimple node; it must be detected as SDXL.
3. Checks the memory the loaded weights will take against what the machine has free
   (``--unet-dtype``: ``auto`` is the loader's own choice, float32 on a CPU; ``fp16`` and
   ``fp8_e4m3fn`` are the host's --fp16-unet / --fp8_e4m3fn-unet), and stops with a message if
   they would not fit.
4. Times one UNet call at 256 px and picks the largest side in --px-choices (1024 first) whose
   estimated cost for the run fits --budget-min minutes; if none fits it stops and says so.
5. Runs the ZOODiP Train Token node for --steps steps (perturbation 1e-2, PUTS 500-700, the
   paper's SDXL settings) on generated photos, and reports times and memory as JSON.

    python -m benchmarks.sdxl_full_load [--unet-dtype fp8_e4m3fn] [--steps 2] [--queries 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

CKPT = "zoodip-sdxl-full-random.safetensors"
UNET_PARAMS = 2.567e9  # SDXL base UNet
TEXT_PARAMS = 0.817e9  # CLIP-L + CLIP-G (the host keeps text encoders in float16)
VAE_PARAMS = 0.084e9
DTYPE_BYTES = {"auto": 4, "fp32": 4, "fp16": 2, "fp8_e4m3fn": 1}
MARGIN_GB = 2.5  # activations (1024 px, batch n+1) and the rest of the process
EXTRAPOLATION_SAFETY = 1.3  # attention grows faster than the pixel count


def _gb(n_bytes: float) -> float:
    return round(n_bytes / 1e9, 2)


def _proc_status(field: str) -> float:
    """VmRSS / VmHWM / RssAnon of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1]) * 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _mem_available() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return float(line.split()[1]) * 1024
    return float("inf")


def _unet_call_seconds(model, clip, px: int, batch: int) -> float:
    """One UNet call at px x px for `batch` conditionings, the way training calls it."""
    import comfy.model_management as mm
    import comfy.samplers
    import torch

    mm.load_models_gpu([model])
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a photo of a dog"), return_pooled=True)
    x = torch.randn(1, 4, px // 8, px // 8, device=model.load_device)
    sigma = model.get_model_object("model_sampling").sigma(torch.tensor([600.0]))
    conds = [[cond, {"pooled_output": pooled}]] * batch
    import comfy.sampler_helpers

    conds = comfy.sampler_helpers.convert_cond(conds)
    conds = comfy.samplers.encode_model_conds(model.model.extra_conds, conds, x, x.device, "positive", latent_image=x)
    model.pre_run()
    try:
        t0 = time.perf_counter()
        with torch.inference_mode():
            comfy.samplers.calc_cond_batch(model.model, [[c] for c in conds], x, sigma.to(x.device), model.model_options)
        return time.perf_counter() - t0
    finally:
        model.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=None, help="where the 6.9 GB checkpoint is kept")
    ap.add_argument("--unet-dtype", choices=sorted(DTYPE_BYTES), default="auto")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--queries", type=int, default=1, help="n; a step is n+1 UNet passes in one batch")
    ap.add_argument("--px-choices", default="1024,768,512,384,256")
    ap.add_argument("--budget-min", type=float, default=10.0, help="stop instead of training longer than this")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    report: dict = {"platform": platform.platform(), "cpus": os.cpu_count(), "unet_dtype": args.unet_dtype,
                    "steps": args.steps, "queries": args.queries}

    def done(status: str, **extra) -> int:
        report.update(status=status, **extra)
        # VmHWM counts the pages of the memory-mapped checkpoint file the loader read (page
        # cache, given back under pressure); RssAnon is the process's own memory at the end
        report["peak_rss_gb"] = _gb(_proc_status("VmHWM"))
        report["end_rss_anon_gb"] = _gb(_proc_status("RssAnon"))
        text = json.dumps(report, indent=2)
        print(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
        return 0 if status == "ok" else 2

    from devtools.assets import cached_sdxl_checkpoint, make_photos
    from devtools.host import HeadlessHost

    t0 = time.perf_counter()
    path = cached_sdxl_checkpoint(args.seed, cache_dir=args.cache_dir)
    report["checkpoint"] = {"path": str(path), "gb": _gb(path.stat().st_size),
                            "build_or_find_s": round(time.perf_counter() - t0, 1)}

    need = UNET_PARAMS * DTYPE_BYTES[args.unet_dtype] + TEXT_PARAMS * 2 + VAE_PARAMS * 4 + MARGIN_GB * 1e9
    report["memory_needed_gb"], report["memory_available_gb"] = _gb(need), _gb(_mem_available())
    if need > _mem_available():
        smaller = [d for d in ("fp16", "fp8_e4m3fn") if DTYPE_BYTES[d] < DTYPE_BYTES[args.unet_dtype]]
        hint = f"; try --unet-dtype {smaller[0]}" if smaller else "; wait until the machine has more free memory"
        return done("skipped: not enough free memory for these weights" + hint)

    with tempfile.TemporaryDirectory(prefix="zoodip-sdxl-") as base, HeadlessHost(base) as host:
        import torch
        from comfy.cli_args import args as host_args

        import nodes

        if args.unet_dtype in ("fp16", "fp8_e4m3fn"):
            setattr(host_args, f"{args.unet_dtype}_unet", True)  # the host's --fp16-unet / --fp8_e4m3fn-unet
        elif args.unet_dtype == "fp32":
            host_args.fp32_unet = True
        (host.model_dir("checkpoints") / CKPT).symlink_to(path)

        warnings: list[str] = []

        class Catch(logging.Handler):
            def emit(self, record):
                warnings.append(record.getMessage()[:300])

        catch = Catch(level=logging.WARNING)
        logging.getLogger().addHandler(catch)
        t0 = time.perf_counter()
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(CKPT)[:3]
        load_s = time.perf_counter() - t0
        logging.getLogger().removeHandler(catch)
        config = type(model.model.model_config).__name__
        report["load"] = {
            "seconds": round(load_s, 1), "detected": config, "model_type": str(model.model.model_type),
            "unet_weight_dtype": str(next(model.model.diffusion_model.parameters()).dtype),
            "text_weight_dtype": str(clip.cond_stage_model.clip_g.transformer.get_input_embeddings().weight.dtype),
            "rss_gb": _gb(_proc_status("VmRSS")), "rss_anon_gb": _gb(_proc_status("RssAnon")), "warnings": [w for w in warnings if "missing" in w or "unexpected" in w],
        }
        if config != "SDXL":
            return done(f"failed: detected as {config}, not SDXL")
        if report["load"]["warnings"]:
            return done("failed: the loader reported missing or unexpected weights")

        t256 = _unet_call_seconds(model, clip, 256, args.queries + 1)
        report["unet_call_256px_s"] = round(t256, 2)
        budget = args.budget_min * 60
        chosen = None
        for px in (int(p) for p in args.px_choices.split(",")):
            estimate = args.steps * t256 * (px / 256) ** 2 * (EXTRAPOLATION_SAFETY if px > 256 else 1.0)
            report.setdefault("estimates_s", {})[px] = round(estimate)
            if estimate <= budget:
                chosen = px
                break
        if chosen is None:
            return done(f"skipped: {args.steps} steps would exceed {args.budget_min:g} min even at the smallest side")
        report["px"] = chosen
        if chosen != int(args.px_choices.split(",")[0]):
            report["note"] = f"{args.px_choices.split(',')[0]} px would exceed {args.budget_min:g} min here; ran at {chosen} px"

        make_photos(host.input_dir / "photos", n=2, size=chosen, seed=0)
        N = nodes.NODE_CLASS_MAPPINGS
        images = N["ZOODiPLoadImages"]().load("photos", chosen)[0]
        t0 = time.perf_counter()
        with torch.inference_mode():
            trained_clip, emb, history = N["ZOODiPTrainToken"]().train(
                model, clip, vae, images, token_name="sdxl-bench", init_word="dog", num_vectors=1, steps=args.steps,
                learning_rate=5e-3, queries=args.queries, perturbation=1e-2, seed=0,
                puts=N["PUTSSamplerConfig"]().make(500, 700)[0], prompt_templates="a photo of a {token}",
            )[:3]
        train_s = time.perf_counter() - t0
        report["train"] = {
            "seconds": round(train_s, 1), "per_step_s": round(train_s / args.steps, 1),
            "losses": [round(v, 5) for v in history.loss],
            "encoders": {k: list(v.shape) for k, v in emb.vectors.items()},
            "note": "includes the one-off VAE encoding of the 2 photos",
        }
        return done("ok")


if __name__ == "__main__":
    sys.exit(main())
