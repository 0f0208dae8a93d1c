"""The shipped toy workflow (workflows/train_token_toy.json), derived from train_token.json.

It trains a token on the toy model's held-out concept with previews, then samples with it:
Load Checkpoint (zoodip-toy-shapes.safetensors) -> Load Training Images (toy-purple-cross, 64 px,
the node's minimum) -> ImageScale to 32 px (what the toy model was trained at) -> Train Token
(init word "object", data.TOKEN_INIT_WORD; the toy captions' templates, previews every 100
steps) -> Save Embedding, and
a KSampler on "a photo of a embedding:toy-cross" (Empty Latent 64x64: the toy VAE is x4, so that
is an 8x8 latent and a 32x32 image). ``python -m benchmarks.toymodel build --comfyui DIR``
puts the checkpoint and the photos where this workflow looks for them.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import data
from .install import CKPT, folder

ROOT = Path(__file__).resolve().parents[2]
FOLDER = folder()
TOKEN = "toy-cross"
TEMPLATES = "a photo of a {token}\na {token}"


def make(src: Path = ROOT / "workflows" / "train_token.json") -> dict[str, Any]:
    wf = copy.deepcopy(json.loads(src.read_text()))
    nodes = {n["id"]: n for n in wf["nodes"]}
    by_type = {n["type"]: n for n in wf["nodes"]}
    by_type["CheckpointLoaderSimple"]["widgets_values"] = [CKPT]
    by_type["ZOODiPLoadImages"]["widgets_values"] = [FOLDER, 64]
    train = by_type["ZOODiPTrainToken"]
    v = train["widgets_values"]
    # name, init word, vectors, steps, lr, queries, mu, seed, control, templates, two_sided,
    # held_out_every, save_every, preview_every, preview_prompt (the node's widget order)
    v[0], v[1], v[3], v[9] = TOKEN, data.TOKEN_INIT_WORD, 1500, TEMPLATES
    v[11], v[12], v[13], v[14] = 100, 0, 100, "a photo of a {token}"
    by_type["SubspaceProjector"]["widgets_values"] = [32, 0.001]
    by_type["ZOODiPSaveEmbedding"]["widgets_values"] = [TOKEN, False]
    enc = [n for n in wf["nodes"] if n["type"] == "CLIPTextEncode"]
    enc[0]["widgets_values"] = [f"a photo of a embedding:{TOKEN}"]
    enc[1]["widgets_values"] = [""]
    by_type["EmptyLatentImage"]["widgets_values"] = [64, 64, 4]
    ks = by_type["KSampler"]["widgets_values"]
    ks[2], ks[3] = 20, 4.0
    by_type["SaveImage"]["widgets_values"] = [f"zoodip/{TOKEN}"]
    wf.setdefault("extra", {})["info"] = {
        "name": "ZOODiP: train a token on the toy model",
        "description": "On the toy model (python -m benchmarks.toymodel build --comfyui <your ComfyUI> installs it "
        f"and its photos): train {TOKEN} from the word {data.TOKEN_INIT_WORD} with ZOODiP (PUTS + Subspace Gradient), "
        f"save it, and sample with embedding:{TOKEN}.",
    }

    # ImageScale between Load Training Images and Train Token (images link 4)
    new_id = max(nodes) + 1
    link_id = wf["last_link_id"] + 1
    load = by_type["ZOODiPLoadImages"]
    scale = {
        "id": new_id, "type": "ImageScale", "pos": [load["pos"][0], load["pos"][1] + 140], "size": [300, 130],
        "flags": {}, "order": load.get("order", 0), "mode": 0,
        "inputs": [{"name": "image", "type": "IMAGE", "link": 4}],
        "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [link_id], "slot_index": 0}],
        "properties": {"Node name for S&R": "ImageScale"},
        "widgets_values": ["area", 32, 32, "disabled"],
        "title": "Scale to 32 px (the toy model's size)",
    }
    for link in wf["links"]:
        if link[0] == 4:  # load -> scale
            link[3], link[4] = new_id, 0
    wf["links"].append([link_id, new_id, 0, train["id"], 3, "IMAGE"])
    for inp in train["inputs"]:
        if inp["name"] == "images":
            inp["link"] = link_id
    wf["nodes"].append(scale)
    wf["last_node_id"], wf["last_link_id"] = new_id, link_id
    return wf


def write(out: Path = ROOT / "workflows" / "train_token_toy.json") -> Path:
    out.write_text(json.dumps(make(), indent=2) + "\n")
    return out


def run(host: Any, ckpt: Path, out: Path | None, grid_path: Path | None, steps: int | None = None,
        say: Callable[[str], None] = print) -> dict[str, Any]:
    """Queue the shipped API workflow, as a user would, in a headless host with the pack loaded;
    classify its training previews and its final samples (is the preview turning into the concept?)."""
    from devtools.host import load_api_workflow

    from . import check, classifier, install, model

    t0 = time.perf_counter()
    vae = check.load_in_host(host, ckpt, CKPT)[2]  # links it where the workflow looks
    described = model.describe(ckpt)
    held_out = model.held_out(described["toymodel"])
    install.photos(host.base, held_out, say)
    api = load_api_workflow(ROOT / "workflows" / "api" / "train_token_toy.api.json")
    by_type = {v["class_type"]: k for k, v in api.items()}
    api[by_type["ZOODiPLoadImages"]]["inputs"]["folder"] = folder(held_out)  # the shipped one: purple,cross
    train = api[by_type["ZOODiPTrainToken"]]["inputs"]
    if steps:  # a shorter run keeps at least two previews
        train["steps"] = steps
        train["preview_every"] = max(1, min(int(train["preview_every"]), steps // 2))
    api[by_type["ZOODiPSaveEmbedding"]]["inputs"]["overwrite"] = True  # a scratch host: rerunnable
    say(f"queueing the toy workflow: {train['steps']} steps, previews every {train['preview_every']}")
    r = host.run_prompt(api)
    if not r.ok:
        raise RuntimeError(f"the toy workflow failed: {r.errors}")
    previews = r.value(by_type["ZOODiPTrainToken"], 3).float()
    final = r.value(by_type["VAEDecode"], 0).float()
    clf = classifier.cached(vae, **check.CLASSIFIER["full"])
    every = int(train["preview_every"])
    named = [check.judged(clf, previews[i : i + 1], held_out) for i in range(previews.shape[0])]
    judged = check.judged(clf, final, held_out)
    result = {
        **described, "held_out": " ".join(held_out), "steps": int(train["steps"]), "init_word": train["init_word"],
        "preview_steps": [every * (i + 1) for i in range(previews.shape[0])],
        "preview_is_concept": [bool(x["accuracy"]) for x in named],
        "preview_colour_right": [bool(x["colour_accuracy"]) for x in named],
        "preview_shape_right": [bool(x["shape_accuracy"]) for x in named],
        "final": judged,
        "final_accuracy": judged["accuracy"],
        "final_images": int(final.shape[0]),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    if grid_path is not None:
        check.grid([previews, final], grid_path)
    return result


if __name__ == "__main__":
    print(write())
