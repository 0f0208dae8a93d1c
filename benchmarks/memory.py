"""Memory benchmark: ZOODiP training next to sampling and first-order TI, per weight precision.

Every case (a precision and a phase) runs in its own process, inside a headless ComfyUI (the real
host loads the checkpoint with its own loader), on a random-weight SD1.5 checkpoint ("full": the
real SD1.5 shapes, at 512x512; "tiny" for the smoke test). In that process:

1. load the checkpoint at the case's precision (and quantize it with the Quantize Model node for
   int8 / nf4), drop everything else, build the phase's inputs, load the models as the sampler does;
2. reset the peak: ``/proc/self/clear_refs`` <- "5" resets VmHWM (peak resident memory) to the
   current resident size; on a GPU also ``torch.cuda.reset_peak_memory_stats``;
3. run the phase and read the peak (VmHWM from ``/proc/self/status``; ``max_memory_allocated``).

Phases, all at batch 1 (one image):

- ``sample``: one KSampler step with CFG (the cond and uncond rows in one batch of 2), from
  conditioning encoded before the reset, as a KSampler node runs after CLIPTextEncode;
- ``train``: a ZOODiP training run as Train Token does it with its defaults (n = 2 queries, PUTS,
  Subspace Projector, ``query_batch`` 2: the n+1 = 3 queries go to the UNet in batches of at most
  2, the batch a CFG sampler runs), including its one-off VAE encoding of the reference photos,
  for ``--steps`` steps;
- ``train_one_call``: the same with ``query_batch`` 0: all 3 queries in one UNet batch of 3;
- ``ti``: first-order textual inversion: the same prepared run (the same photos encoded, the same
  loss through the host's text encoder and UNet), the token a leaf tensor requiring grad, backward
  to the token only, Adam, for ``--ti-steps`` steps.

Precisions: fp32 (UNet and text encoder fp32), fp16 (both fp16), fp8 (both float8_e4m3fn, as
UNETLoader's weight_dtype / the host's --fp8_e4m3fn-text-enc), int8 (Quantize Model: int8 Linear
+ int8 conv, text encoder int8), nf4 (nf4 Linear + int8 conv, text encoder nf4), nf4c (nf4 Linear
+ nf4 conv). The quantized ones start from an fp16 load. Also reported: the resident bytes of the
UNet + text encoder weights per precision (distinct storages, quantization scales included).

The peak is the process's whole resident memory (weights, VAE, activations, allocator slack), so
ratios compare like with like: the same model loaded the same way, one phase each. The cases run
with a fixed glibc mmap threshold (``--mmap-threshold``, see MMAP_THRESHOLD): with glibc's dynamic
default, freed buffers stay in a fragmenting heap and the peak grows by a few hundred MB over the
first steps of any long phase, whatever it computes.

    python -m benchmarks.memory [--size full] [--precisions fp32,fp16,fp8,int8,nf4,nf4c]
                                [--phases sample,train,train_one_call,ti] [--steps 2] [--ti-steps 1]
                                [--out benchmarks/results/memory.json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as _dt
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import _common
from benchmarks._common import ROOT, FirstOrderTI, pack

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "memory.json"
PRECISIONS = ("fp32", "fp16", "fp8", "int8", "nf4", "nf4c")
DEFAULT_PRECISIONS = ("fp32", "fp16", "fp8", "int8", "nf4", "nf4c")
PHASES = ("sample", "train", "train_one_call", "ti")
SIZES = {"full": {"px": 512, "photos": 4}, "tiny": {"px": 64, "photos": 2}}
TARGET_TRAIN_OVER_SAMPLE = 1.05
TARGET_WEIGHTS = {"int8": 0.3, "nf4": 0.2}
QUERIES = 2
SAMPLER_BATCH = 2  # cond + uncond
# glibc serves buffers above this size with mmap and returns them to the OS when freed. By default
# it raises the threshold after the first such free (up to 32 MiB), and later buffers then come
# from the heap, which fragments: the peak grows with the run's history, not with what a phase
# needs. A fixed threshold (glibc's initial value) measures the need; 0 keeps the dynamic default.
MMAP_THRESHOLD = 128 * 1024


def _precision(name: str) -> dict[str, Any]:
    import torch

    if name == "fp32":
        return {"unet": torch.float32, "te": torch.float32}
    if name == "fp16":
        return {"unet": torch.float16, "te": torch.float16}
    if name == "fp8":
        return {"unet": torch.float8_e4m3fn, "te": torch.float8_e4m3fn}
    if name == "int8":
        return {"unet": torch.float16, "te": torch.float16, "linear": "int8", "conv": "int8"}
    if name == "nf4":
        return {"unet": torch.float16, "te": torch.float16, "linear": "nf4", "conv": "int8"}
    if name == "nf4c":
        return {"unet": torch.float16, "te": torch.float16, "linear": "nf4", "conv": "nf4"}
    raise ValueError(f"unknown precision {name!r}; choose from {PRECISIONS}")


# --- memory readings ---------------------------------------------------------------------

def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(Exception):  # glibc: give freed heap back, so RSS is what is in use
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak(device) -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)


def read_peak(device) -> dict[str, Any]:
    out = {"rss_peak": _status("VmHWM"), "rss_now": _status("VmRSS")}
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.synchronize()
        out["cuda_peak"] = int(torch.cuda.max_memory_allocated(device))
    return out


# --- one case, in this process -----------------------------------------------------------

def run_case(precision: str, phase: str, size: str, steps: int, ti_steps: int) -> dict[str, Any]:
    import torch

    from devtools.assets import cached_sd15_checkpoint, make_photos
    from devtools.host import HeadlessHost

    cfg = SIZES[size]
    px = cfg["px"]
    spec = _precision(precision)
    t0 = time.perf_counter()
    with HeadlessHost() as session:
        import comfy.model_management as mm
        import comfy.sd
        import comfy.utils
        import folder_paths

        import nodes

        pk = pack(session, "nodes.host", "nodes.training", "nodes.quantize", "zoodip.quant", "zoodip.settings",
                  "zoodip.seeds")
        quant = pk["zoodip.quant"]
        ckpt = cached_sd15_checkpoint(size, seed=0)
        make_photos(session.input_dir / "bench", n=cfg["photos"], size=px, seed=0)

        # 1. load at the case's precision
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(
            str(ckpt), output_vae=True, output_clip=True, embedding_directory=folder_paths.get_folder_paths("embeddings"),
            model_options={"dtype": spec["unet"]}, te_model_options={"dtype": spec["te"]},
        )[:3]
        if "linear" in spec:
            with torch.inference_mode():
                model, clip = pk["nodes.quantize"].ZOODiPQuantizeModel().quantize(model, spec["linear"], spec["conv"], clip, True)
            mm.unload_all_models()
        _trim()
        device = model.load_device
        weights = {
            "unet": quant.resident_bytes(model.model.diffusion_model),
            "text_encoder": quant.resident_bytes(clip.cond_stage_model),
        }
        weights["total"] = quant.resident_bytes(model.model.diffusion_model, clip.cond_stage_model)
        info: dict[str, Any] = {"precision": precision, "phase": phase, "size": size, "px": px, "device": str(device), "pid": os.getpid(),
                                "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                                "unet_weight_dtype": str(model.model.get_dtype()), "weights": weights}

        # 2. the phase's inputs, built before the reset
        batches: list[int] = []
        hook = model.model.diffusion_model.register_forward_pre_hook(lambda m, a: batches.append(int(a[0].shape[0])))
        images = nodes.NODE_CLASS_MAPPINGS["ZOODiPLoadImages"]().load("bench", px)[0]
        settings_mod = pk["zoodip.settings"]
        if phase == "sample":
            with torch.inference_mode():
                pos = nodes.CLIPTextEncode().encode(clip, "a photo of a dog on the beach")[0]
                neg = nodes.CLIPTextEncode().encode(clip, "")[0]
                latent = nodes.EmptyLatentImage().generate(px, px, 1)[0]
        mm.load_models_gpu([model, clip.patcher])
        _trim()
        step_peaks: list[int] = []
        prev_hook = comfy.utils.PROGRESS_BAR_HOOK

        def progress(value, total, preview, prompt_id=None, node_id=None):
            step_peaks.append(_status("VmHWM"))

        # 3. reset, run, read
        rss_start = _status("VmRSS")
        reset_peak(device)
        t = time.perf_counter()
        extra: dict[str, Any] = {}
        comfy.utils.set_progress_bar_global_hook(progress)
        try:
            if phase == "sample":
                with torch.inference_mode():
                    out = nodes.KSampler().sample(model, 0, 1, 7.0, "euler", "normal", pos, neg, latent, denoise=1.0)[0]
                extra["finite"] = bool(torch.isfinite(out["samples"]).all())
            elif phase in ("train_one_call", "train"):
                settings = settings_mod.TrainSettings(
                    token_name="bench", init_word="dog", num_vectors=1, steps=steps, learning_rate=5e-3, queries=QUERIES,
                    perturbation=1e-3, seed=0, puts=settings_mod.PUTSConfig(500, 900), subspace=settings_mod.SubspaceConfig(128, 1e-3),
                    query_batch=SAMPLER_BATCH if phase == "train" else 0,
                )
                training = pk["nodes.training"]
                with torch.inference_mode():
                    run = training.prepare(model, clip, vae, images, settings)
                    run = training.train(run, on_step=lambda r, rate: progress(r.step, steps, None))
                extra["loss"] = run.history.loss
                extra["max_batch"] = run.loss_fn.max_batch
            elif phase == "ti":
                settings = settings_mod.TrainSettings(token_name="bench", init_word="dog", num_vectors=1, steps=ti_steps,
                                                      puts=settings_mod.PUTSConfig(500, 900))
                training, hostm = pk["nodes.training"], pk["nodes.host"]
                with torch.inference_mode():
                    run = training.prepare(model, clip, vae, images, settings)
                ti = FirstOrderTI(run.loss_fn, run.trainer.theta, pk["zoodip.seeds"].derive_seed)
                with hostm.sampling_session(model, clip):
                    extra["ti"] = []
                    for _ in range(ti_steps):
                        extra["ti"].append(ti.step())
                        progress(0, 0, None)
                if not all(r["grad_norm"] and r["grad_norm"] > 0 for r in extra["ti"]):
                    raise RuntimeError(f"first-order TI got no gradient: {extra['ti']}")
            else:
                raise ValueError(f"unknown phase {phase!r}")
        finally:
            comfy.utils.set_progress_bar_global_hook(prev_hook)
        seconds = time.perf_counter() - t
        peak = read_peak(device)
        hook.remove()
        info.update(peak)
        info.update({"rss_start": rss_start, "phase_seconds": seconds, "unet_batches": sorted(set(batches)),
                     "unet_calls": len(batches), "step_peaks": step_peaks, "total_seconds": time.perf_counter() - t0})
        info.update(extra)
        if phase.startswith("train"):
            info["steps"] = steps
        if phase == "ti":
            info["steps"] = ti_steps
        return info


# --- the driver: one subprocess per case -----------------------------------------------

def _child_cmd(precision: str, phase: str, args, out: Path) -> list[str]:
    return [sys.executable, "-m", "benchmarks.memory", "--case", f"{precision}:{phase}", "--size", args.size,
            "--steps", str(args.steps), "--ti-steps", str(args.ti_steps), "--case-out", str(out)]


def _child_env(args) -> dict[str, str]:
    env = dict(os.environ)
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    return env


def run_all(args) -> dict[str, Any]:
    precisions = [p for p in args.precisions.split(",") if p]
    phases = [p for p in args.phases.split(",") if p]
    for p in precisions:
        _precision(p)
    for p in phases:
        if p not in PHASES:
            raise SystemExit(f"unknown phase {p!r}; choose from {PHASES}")
    done: dict[tuple[str, str], dict[str, Any]] = {}
    if args.reuse and args.out and args.out.exists():  # keep the cases a previous (interrupted) run measured
        for c in json.loads(args.out.read_text()).get("cases", []):
            if "error" not in c and c.get("size") == args.size:
                done[(c["precision"], c["phase"])] = c
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="zoodip-mem-") as tmp:
        for precision in precisions:
            for phase in phases:
                if (precision, phase) in done:
                    say(f"[{precision}:{phase}] reused from {args.out}")
                    cases.append(done[(precision, phase)])
                    continue
                out = Path(tmp) / f"{precision}-{phase}.json"
                say(f"[{precision}:{phase}] running in a new process")
                t = time.perf_counter()
                proc = subprocess.run(_child_cmd(precision, phase, args, out), cwd=str(ROOT), env=_child_env(args),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                if proc.returncode != 0 or not out.exists():
                    tail = "\n".join(proc.stdout.splitlines()[-30:])
                    say(f"[{precision}:{phase}] FAILED (exit {proc.returncode}):\n{tail}")
                    cases.append({"precision": precision, "phase": phase, "size": args.size,
                                  "error": f"exit {proc.returncode}", "log_tail": tail})
                else:
                    case = json.loads(out.read_text())
                    cases.append(case)
                    say(f"[{precision}:{phase}] peak {case['rss_peak'] / 2**30:.2f} GiB (start {case['rss_start'] / 2**30:.2f} GiB), "
                        f"phase {case['phase_seconds']:.0f} s, process {time.perf_counter() - t:.0f} s")
                if args.out:  # after every case, so an interrupted run keeps what it measured
                    _write(args.out, summarize(cases, args))
    return summarize(cases, args)


def _write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")


def summarize(all_cases: list[dict[str, Any]], args) -> dict[str, Any]:
    cases = [c for c in all_cases if "error" not in c]
    by = {(c["precision"], c["phase"]): c for c in cases}
    precisions = list(dict.fromkeys(c["precision"] for c in cases))
    fp32_weights = by.get(("fp32", "sample"), next((c for c in cases if c["precision"] == "fp32"), None))
    rows = []
    for p in precisions:
        any_case = next(c for c in cases if c["precision"] == p)
        row: dict[str, Any] = {"precision": p, "weights_bytes": any_case["weights"]["total"],
                               "unet_weights_bytes": any_case["weights"]["unet"],
                               "text_encoder_weights_bytes": any_case["weights"]["text_encoder"]}
        if fp32_weights is not None:
            row["weights_over_fp32"] = row["weights_bytes"] / fp32_weights["weights"]["total"]
        for phase in PHASES:
            c = by.get((p, phase))
            if c is not None:
                row[f"{phase}_peak_bytes"] = c["rss_peak"]
                row[f"{phase}_start_bytes"] = c["rss_start"]
                row[f"{phase}_seconds"] = c["phase_seconds"]
                if "cuda_peak" in c:
                    row[f"{phase}_cuda_peak_bytes"] = c["cuda_peak"]
        for t in ("train_one_call", "train"):
            if f"{t}_peak_bytes" in row and "sample_peak_bytes" in row:
                row[f"{t}_over_sample"] = row[f"{t}_peak_bytes"] / row["sample_peak_bytes"]
        if "ti_peak_bytes" in row and "sample_peak_bytes" in row:
            row["ti_over_sample"] = row["ti_peak_bytes"] / row["sample_peak_bytes"]
        if "ti_peak_bytes" in row and "train_peak_bytes" in row:
            row["train_over_ti"] = row["train_peak_bytes"] / row["ti_peak_bytes"]
        rows.append(row)
    targets = {
        "train_over_sample": {r["precision"]: r["train_over_sample"] <= TARGET_TRAIN_OVER_SAMPLE
                              for r in rows if "train_over_sample" in r},
        "weights_over_fp32": {p: next((r["weights_over_fp32"] <= lim for r in rows if r["precision"] == p and "weights_over_fp32" in r), None)
                              for p, lim in TARGET_WEIGHTS.items()},
    }
    return {
        "benchmark": "memory",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.memory " + " ".join(sys.argv[1:]),
        "settings": {"size": args.size, "px": SIZES[args.size]["px"], "photos": SIZES[args.size]["photos"], "queries": QUERIES,
                     "train_steps": args.steps, "ti_steps": args.ti_steps, "train_query_batch": SAMPLER_BATCH,
                     "malloc_mmap_threshold": args.mmap_threshold or "glibc default (dynamic)",
                     "sampler": "KSampler euler/normal, 1 step, cfg 7 (cond + uncond in one batch)"},
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "targets": {"train_over_sample_max": TARGET_TRAIN_OVER_SAMPLE, "weights_over_fp32_max": TARGET_WEIGHTS, "met": targets},
        "rows": rows,
        "failed": [{k: c[k] for k in ("precision", "phase", "error", "log_tail")} for c in all_cases if "error" in c],
        "cases": all_cases,
    }


def _gib(x: int | None) -> str:
    return "-" if x is None else f"{x / 2**30:.2f}"


def table(result: dict[str, Any]) -> str:
    lines = [
        "| precision | weights UNet+TE GiB | x fp32 | sample peak GiB | ZOODiP train peak GiB (query_batch 2) | / sample "
        "| train, query_batch 0 (batch 3) | / sample | first-order TI peak GiB | / sample |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        def ratio(k, r=r):
            return f"{r[k]:.3f}" if k in r else "-"

        lines.append(
            f"| {r['precision']} | {_gib(r['weights_bytes'])} | {ratio('weights_over_fp32')} | {_gib(r.get('sample_peak_bytes'))} | "
            f"{_gib(r.get('train_peak_bytes'))} | {ratio('train_over_sample')} | {_gib(r.get('train_one_call_peak_bytes'))} | "
            f"{ratio('train_one_call_over_sample')} | {_gib(r.get('ti_peak_bytes'))} | {ratio('ti_over_sample')} |"
        )
    return "\n".join(lines)


def say(msg: str) -> None:
    _common.say(msg, sys.stderr)  # stderr: stdout carries the table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--precisions", default=",".join(DEFAULT_PRECISIONS))
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--steps", type=int, default=2, help="ZOODiP training steps per train case (the peak is reached in step 1)")
    ap.add_argument("--ti-steps", type=int, default=1)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--mmap-threshold", type=int, default=MMAP_THRESHOLD,
                    help="glibc MALLOC_MMAP_THRESHOLD_ for the cases (bytes; 0 = glibc's dynamic default)")
    ap.add_argument("--reference", action="append", default=[], metavar="NAME=PATH",
                    help="embed the rows of an earlier result file under reference_runs[NAME]")
    ap.add_argument("--reuse", action="store_true", help="keep the cases already measured in --out (same size), run the rest")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--case-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        precision, phase = args.case.split(":")
        info = run_case(precision, phase, args.size, args.steps, args.ti_steps)
        args.case_out.write_text(json.dumps(info, indent=1, default=str))
        return 0
    result = run_all(args)
    for ref in args.reference:  # earlier runs (e.g. with other allocator settings), kept beside this one
        name, _, path = ref.partition("=")
        other = json.loads(Path(path).read_text())
        result.setdefault("reference_runs", {})[name] = {k: other[k] for k in ("created", "command", "settings", "rows", "targets")}
    print(table(result))
    if args.out:
        _write(args.out, result)
        say(f"wrote {args.out}")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
