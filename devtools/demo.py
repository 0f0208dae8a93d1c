"""The built-in demo: the shipped workflow, headless, on a generated checkpoint and photos.

    python -m devtools.demo [--steps 200] [--out out/demo]

Builds (once, cached) a tiny SD1.5-architecture checkpoint with seeded random weights and four
generated photos, runs workflows/api/train_token.api.json in the real host with sizes shrunk for a
CPU, prints the progress and the held-out loss, and ends with where it wrote the embedding, the
sample, the loss graph and the previews (all under --out). Random weights know nothing, so the
sample is noise-like: the demo shows the machinery, not image quality.
"""

from __future__ import annotations

import argparse
import re
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
    # the sample is named after the token, as the shipped workflow names it after its own (my-dog)
    p[by_type["SaveImage"][0]]["inputs"]["filename_prefix"] = f"zoodip/{token}"
    return p


def _ui_files(host, r, node_id: str) -> list[Path]:
    """The image files a node showed in the UI (``{"ui": {"images": [...]}}``), as paths."""
    roots = {"temp": host.temp_dir, "output": host.output_dir}
    images = (r.ui.get(node_id) or {}).get("images", [])
    return [roots[i["type"]] / i.get("subfolder", "") / i["filename"] for i in images]


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
        # the app empties its temp folder (previews, the loss graph) at start; so does the demo
        shutil.rmtree(host.temp_dir, ignore_errors=True)
        host.temp_dir.mkdir(parents=True)

        every = max(1, args.steps // 20)  # about 20 progress lines, whatever the length of the run

        def show(m) -> None:
            if m.event == "progress_text":
                step = re.match(r"step (\d+)/(\d+) ", m.data["text"])
                if step is None or int(step[1]) % every == 0 or step[1] == step[2]:
                    print(f"  {m.data['text']}", flush=True)
            elif m.event == "executing" and m.data.get("node"):
                node = prompt.get(m.data["node"], {})
                print(f"running {node.get('class_type', m.data['node'])}", flush=True)

        print(f"training '{args.token}' for {args.steps} steps in {base}", flush=True)
        r = host.run_prompt(prompt, on_message=show)
        if not r.ok:
            print("the demo failed:", *r.errors, sep="\n  ", file=sys.stderr)
            return 1
        ids = {v["class_type"]: k for k, v in prompt.items()}
        history = r.value(ids["ZOODiPTrainToken"], 2)
        k = prompt[ids["ZOODiPTrainToken"]]["inputs"]["held_out_every"]
        print(
            "\nheld-out loss: the denoising loss of the current token on 4 fixed draws (photo, noise, timestep),\n"
            "apart from training's random ones and the same each time, so the points compare (the per-step loss\n"
            f"above draws anew each step and is noisy); measured every {k} step{'s' if k > 1 else ''}, lower is better"
        )
        points = [f"step {s}: {v:.4f}" for s, v in history.held_out]
        for i in range(0, len(points), 6):
            print("  " + "   ".join(points[i : i + 6]))
        print(f"\nembedding:  {host.model_dir('embeddings') / (args.token + '.safetensors')}  (prompt word embedding:{args.token})")
        for f in _ui_files(host, r, ids["SaveImage"]):
            print(f"sample:     {f}  (KSampler with 'embedding:{args.token}'; random weights, so noise-like)")
        for f in _ui_files(host, r, ids["ZOODiPLossGraph"]):
            print(f"loss graph: {f}  (the loss of every step, its moving average, the held-out points)")
        previews = _ui_files(host, r, ids["PreviewImage"])
        if previews:
            print(f"previews:   {len(previews)} images sampled with the token during training, in {previews[0].parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
