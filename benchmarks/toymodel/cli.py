"""Command line: build (train and cache) the toy checkpoint, install it, check it."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def install(path: Path, comfyui: Path) -> None:
    """Copy the checkpoint and write the concept photos where the toy workflow expects them."""
    from . import workflow

    dest = comfyui / "models" / "checkpoints" / workflow.CKPT
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(path, tmp)
    os.replace(tmp, dest)
    _say(f"installed {dest}")
    install_photos(comfyui)


def install_photos(comfyui: Path) -> Path:
    """4 photos (64 px) of the held-out concept in <comfyui>/input/toy-purple-cross/."""
    from PIL import Image

    from . import data, workflow

    photos = comfyui / "input" / workflow.FOLDER
    photos.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(data.make_set(4, 64, 2000, concepts=(data.HELD_OUT,)).images):
        Image.fromarray(img).save(photos / f"{i:02d}.png")
    _say(f"wrote 4 photos of the held-out concept ({' '.join(data.HELD_OUT)}) to {photos}")
    return photos


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.toymodel", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train the toy model (cached; ~15 min for full on one CPU thread)")
    b.add_argument("--size", choices=("full", "smoke"), default="full")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--force", action="store_true", help="retrain even if cached")
    b.add_argument(
        "--comfyui", metavar="COMFYUI_DIR",
        help="also install into this ComfyUI: models/checkpoints/zoodip-toy-shapes.safetensors and "
        "input/toy-purple-cross/ (4 photos of the held-out concept), what workflows/train_token_toy.json loads",
    )
    c = sub.add_parser("check", help="sample every caption with the host and classify the images")
    c.add_argument("--size", choices=("full", "smoke"), default="full")
    c.add_argument("--samples", type=int, default=16, help="images per caption")
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default 4)")
    c.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "toymodel_check.json"))
    c.add_argument("--grid", default=str(ROOT / "benchmarks" / "results" / "toymodel_samples.png"))
    w = sub.add_parser("workflow", help="queue the shipped toy workflow headless; classify its previews and samples")
    w.add_argument("--size", choices=("full", "smoke"), default="full")
    w.add_argument("--steps", type=int, default=None, help="training steps (default: the workflow's)")
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "toy_workflow.json"))
    w.add_argument("--grid", default=str(ROOT / "benchmarks" / "results" / "toy_workflow_previews.png"))
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    from devtools.host import HeadlessHost

    from . import model

    if a.cmd == "workflow":
        from . import workflow

        with HeadlessHost() as host:
            r = workflow.run(host, model.cached(a.size, _say), Path(a.out), Path(a.grid), a.steps, _say)
        print(json.dumps(r, indent=1))
        return 0
    with HeadlessHost(load_pack=False) as host:
        if a.cmd == "build":
            path = model.checkpoint_path(a.size)
            if a.force or not path.is_file():
                model.build(a.size, path, _say)
            else:
                _say(f"cached: {path}")
            if a.comfyui:
                install(path, Path(a.comfyui))
            print(json.dumps(model.info(path), indent=1))
        else:
            from . import check

            result = check.run(host, model.cached(a.size, _say), a.samples, Path(a.out), Path(a.grid), _say, smoke=a.size == "smoke", cfg=a.cfg)
            print(check.table(result))
    return 0
