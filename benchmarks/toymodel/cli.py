"""Command line: build (train and cache) the toy checkpoint, install it, check it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks._common import say as _say

ROOT = Path(__file__).resolve().parents[2]


HELD_OUT_HELP = ("COLOUR,SHAPE: the concept no caption names (its colour and its shape); default purple,cross; "
                 "part of the toy model's cache key")


def add_toy_arguments(p: argparse.ArgumentParser) -> None:
    """The toy model's settings a command may change (each is part of its cache key); one place for
    the build, the check, the workflow run and benchmarks/fidelity.py."""
    p.add_argument("--held-out", default=None, help=HELD_OUT_HELP)
    p.add_argument("--toy-steps", type=int, default=None,
                   help="the toy model's training steps (default: its size's, in benchmarks/toymodel/model.py SIZES); "
                   "part of its cache key")


def toy_overrides(p: argparse.ArgumentParser, a: argparse.Namespace) -> dict[str, Any]:
    """The settings add_toy_arguments read, checked (a parser error before any work), for model.cached()."""
    from . import data

    try:
        held_out = data.parse_held_out(a.held_out) if a.held_out else None
    except ValueError as e:
        p.error(str(e))
    if a.toy_steps is not None and a.toy_steps < 1:
        p.error(f"--toy-steps must be >= 1, got {a.toy_steps}")
    return {"held_out": ",".join(held_out) if held_out else None, "steps": a.toy_steps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.toymodel", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train the toy model (cached; full: about 40 min on 2 CPU threads)")
    b.add_argument("--size", choices=("full", "smoke"), default="full")
    add_toy_arguments(b)
    b.add_argument("--threads", type=int, default=None,
                   help="torch threads the build runs with (a setting, part of the cache key: weights depend on it); "
                   "default: the size's (full 2, smoke 1)")
    b.add_argument("--force", action="store_true", help="retrain even if cached")
    b.add_argument(
        "--comfyui", metavar="COMFYUI_DIR",
        help="also install into this ComfyUI: models/checkpoints/zoodip-toy-shapes.safetensors and "
        "input/toy-purple-cross/ (4 photos of the held-out concept), what workflows/train_token_toy.json loads",
    )
    c = sub.add_parser("check", help="sample every caption with the host and classify the images")
    c.add_argument("--size", choices=("full", "smoke"), default="full")
    add_toy_arguments(c)
    c.add_argument("--samples", type=int, default=16, help="images per caption")
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default 4)")
    c.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "toymodel_check.json"))
    c.add_argument("--grid", default=str(ROOT / "benchmarks" / "results" / "toymodel_samples.png"))
    j = sub.add_parser("judge", help="train the judge (what every figure uses) and record how it names each of the "
                       "20 colour x shape combinations, freshly drawn, through the toy VAE")
    j.add_argument("--samples", type=int, default=100, help="fresh images per combination")
    j.add_argument("--threads", type=int, default=1)
    j.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "judge.json"))
    w = sub.add_parser("workflow", help="queue the shipped toy workflow headless; classify its previews and samples")
    w.add_argument("--size", choices=("full", "smoke"), default="full")
    add_toy_arguments(w)
    w.add_argument("--steps", type=int, default=None, help="training steps (default: the workflow's)")
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "toy_workflow.json"))
    w.add_argument("--grid", default=str(ROOT / "benchmarks" / "results" / "toy_workflow_previews.png"))
    a = p.parse_args(argv)
    toy = toy_overrides(p, a) if a.cmd != "judge" else {}

    import torch

    if a.cmd != "build":  # the build sets its own thread count (a setting)
        torch.set_num_threads(a.threads)
    if a.cmd == "judge":  # no host: the judge trains through the VAE's closed form (vae.roundtrip)
        from . import judge

        r = judge.run(a.samples, Path(a.out), _say)
        print(judge.table(r))
        return 0
    from devtools.host import HeadlessHost

    from . import model

    if a.cmd == "workflow":
        from . import workflow

        with HeadlessHost() as host:
            r = workflow.run(host, model.cached(a.size, _say, **toy), Path(a.out), Path(a.grid), a.steps, _say)
        print(json.dumps(r, indent=1))
        return 0
    with HeadlessHost(load_pack=False) as host:
        if a.cmd == "build":
            settings = model.settings_for(a.size, threads=a.threads, **toy)
            path = model.checkpoint_path(a.size, settings)
            if a.force or not path.is_file():
                model.build(a.size, path, _say, threads=a.threads, **toy)
            else:
                _say(f"cached: {path}")
            if a.comfyui:
                from . import install

                install.checkpoint(path, Path(a.comfyui), model.held_out(settings), _say)
            print(json.dumps(model.info(path), indent=1))
        else:
            from . import check

            result = check.run(host, model.cached(a.size, _say, **toy), a.samples, Path(a.out), Path(a.grid), _say,
                               smoke=a.size == "smoke", cfg=a.cfg)
            print(check.table(result))
    return 0
