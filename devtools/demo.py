"""The built-in demo: the shipped workflow, headless, on a generated checkpoint and photos.

    python -m devtools.demo [--steps 200] [--out out/demo]

Builds (once, cached) a tiny SD1.5-architecture checkpoint with seeded random weights and four
generated photos, runs workflows/api/train_token.api.json in the real host with sizes shrunk for a
CPU, prints the progress, and ends with the saved embedding and the sample image. Random weights
know nothing, so the sample is noise-like: the demo shows the machinery, not image quality.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "workflows" / "api" / "train_token.api.json"
CKPT = "zoodip-demo-sd15.safetensors"


def shrink(prompt: dict, steps: int, token: str) -> dict:
    """The shipped workflow with demo-sized settings (node ids as in the shipped file)."""
    by_type = {}
    for nid, node in prompt.items():
        by_type.setdefault(node["class_type"], []).append(nid)
    p = {k: {**v, "inputs": dict(v["inputs"])} for k, v in prompt.items()}
    p[by_type["CheckpointLoaderSimple"][0]]["inputs"]["ckpt_name"] = CKPT
    p[by_type["ZOODiPLoadImages"][0]]["inputs"].update(folder="demo-photos", resolution=64)
    p[by_type["ZOODiPTrainToken"][0]]["inputs"].update(
        steps=steps, token_name=token, held_out_every=max(1, steps // 10), preview_every=max(1, steps // 4), save_every=0
    )
    p[by_type["SubspaceProjector"][0]]["inputs"]["tau"] = max(2, min(128, steps // 4))
    p[by_type["ZOODiPSaveEmbedding"][0]]["inputs"].update(filename=token, overwrite=True)
    for nid in by_type["CLIPTextEncode"]:
        p[nid]["inputs"]["text"] = p[nid]["inputs"]["text"].replace("embedding:my-dog", f"embedding:{token}")
    p[by_type["EmptyLatentImage"][0]]["inputs"].update(width=64, height=64)
    p[by_type["KSampler"][0]]["inputs"]["steps"] = 10
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200, help="training steps (default 200: about a minute on 2 CPU cores)")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "demo", help="the host's base folder for the demo (models, input, output)")
    ap.add_argument("--token", default="demo-token", help="the token's name")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from devtools.assets import cached_sd15_checkpoint, make_photos
    from devtools.host import HeadlessHost, load_api_workflow

    base = args.out.resolve()
    with HeadlessHost(base) as host:
        ckpt = host.model_dir("checkpoints") / CKPT
        if not ckpt.exists():
            print("building the demo checkpoint (seeded random weights, SD1.5 architecture)...", flush=True)
            shutil.copyfile(cached_sd15_checkpoint("tiny", seed=0), ckpt)
        photos = host.input_dir / "demo-photos"
        if not photos.exists():
            make_photos(photos, n=4, size=64, seed=0)
        prompt = shrink(load_api_workflow(WORKFLOW), args.steps, args.token)

        def show(m) -> None:
            if m.event == "progress_text":
                print(f"  {m.data['text']}", flush=True)
            elif m.event == "executing" and m.data.get("node"):
                node = prompt.get(m.data["node"], {})
                print(f"running {node.get('class_type', m.data['node'])}", flush=True)

        print(f"training '{args.token}' for {args.steps} steps in {base}", flush=True)
        r = host.run_prompt(prompt, on_message=show)
        if not r.ok:
            print("the demo failed:", *r.errors, sep="\n  ", file=sys.stderr)
            return 1
        train_id = next(k for k, v in prompt.items() if v["class_type"] == "ZOODiPTrainToken")
        history = r.value(train_id, 2)
        print(f"held-out loss: {' -> '.join(f'{v:.4f}' for _, v in history.held_out)}")
        print(f"embedding: {host.model_dir('embeddings') / (args.token + '.safetensors')}")
        for f in host.output_files():
            print(f"sample:    {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
