"""Workflows saved with 0.1.0 still load and run with the same values.

The fixtures in v0_1_0/ are the shipped workflows (UI and API JSON) and the node declarations
(``INPUT_TYPES`` order and options, outputs) exactly as 0.1.0 had them, copied before the nodes
moved to the comfy_api schema. A UI workflow stores widget values by position, so the order of the
widgets is the contract: converting 0.1.0's UI files with today's nodes must give 0.1.0's API files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.demo import CKPT, shrink
from devtools.host import load_api_workflow
from devtools.workflows import ui_to_api

OLD = Path(__file__).resolve().parent / "v0_1_0"
UI_FILES = sorted(OLD.glob("*.json"))
UI_FILES = [p for p in UI_FILES if p.name != "nodes.json"]
# declared on purpose in 0.2.0: a step size must be > 0, now a limit the host checks at queue time
CHANGED = {("ZOODiPTrainToken", "learning_rate", "min"): 1e-8, ("ZOODiPTrainToken", "perturbation", "min"): 1e-8}


def _spec(name: str, spec: tuple) -> dict:
    kind = "COMBO" if isinstance(spec[0], list) else spec[0]
    opts = spec[1] if len(spec) > 1 else {}
    # tooltips are text; "options"/"multiselect"/"multiline": False are how the schema spells a plain widget
    keep = {k: v for k, v in opts.items() if k not in ("tooltip", "options", "multiselect")}
    if keep.get("multiline") is False:
        del keep["multiline"]
    return {"type": kind, **keep}


def test_fixtures_are_there():
    assert [p.name for p in UI_FILES] == ["train_token.json", "train_token_sdxl.json", "train_token_toy.json"]
    assert len(json.loads((OLD / "nodes.json").read_text())) == 10


def test_node_declarations_are_0_1_0s(host):
    old = json.loads((OLD / "nodes.json").read_text())
    for name, o in old.items():
        cls = host.node_class_mappings[name]
        types = cls.INPUT_TYPES()
        assert {k: list(v) for k, v in types.items() if k != "hidden"} == {
            k: v for k, v in o["input_order"].items() if k != "hidden"}, f"{name}: input names or order changed"
        for cat in ("required", "optional"):
            for inp, spec in types.get(cat, {}).items():
                expected = dict(o["inputs"][cat][inp])
                for (node, i, key), value in CHANGED.items():
                    if (node, i) == (name, inp):
                        expected[key] = value
                assert _spec(inp, spec) == expected, f"{name}.{inp}"
                assert (spec[1] if len(spec) > 1 else {}).get("tooltip"), f"{name}.{inp} has no tooltip"
        assert list(cls.RETURN_TYPES) == o["outputs"] and list(cls.RETURN_NAMES) == o["output_names"], name
        assert bool(cls.OUTPUT_NODE) == o["output_node"], name
        assert ("unique_id" in types.get("hidden", {})) == ("unique_id" in o["hidden"]), name
        import nodes

        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[name] == o["display_name"]


@pytest.mark.parametrize("ui_path", UI_FILES, ids=lambda p: p.name)
def test_0_1_0_ui_file_gives_0_1_0_values(host, ui_path):
    ui = json.loads(ui_path.read_text())
    api = load_api_workflow(OLD / "api" / f"{ui_path.stem}.api.json")
    assert ui_to_api(ui, host.node_class_mappings) == api


def _install(host, api: dict) -> None:
    """The checkpoint and photo folders the 0.1.0 workflows name, so they validate as saved."""
    from devtools.assets import cached_sd15_checkpoint, make_photos

    for node in api.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            link = host.model_dir("checkpoints") / inputs["ckpt_name"]
            if not link.exists():  # the tiny SD1.5 under the workflow's name: validation reads only the name
                link.symlink_to(cached_sd15_checkpoint("tiny", seed=0))
        if node["class_type"] == "ZOODiPLoadImages":
            folder = host.input_dir / inputs["folder"]
            if not folder.exists():
                make_photos(folder, n=4, size=64, seed=0)


@pytest.mark.parametrize("ui_path", UI_FILES, ids=lambda p: p.name)
def test_0_1_0_api_file_validates_unchanged(host, ui_path):
    api = load_api_workflow(OLD / "api" / f"{ui_path.stem}.api.json")
    _install(host, api)
    assert host.validate(api) == []


def test_0_1_0_workflow_runs_with_its_values(host):
    """The SD1.5 workflow as 0.1.0 saved it, made small (steps, sizes): the token trains with the
    workflow's own settings, and the saved file records them."""
    api = load_api_workflow(OLD / "api" / "train_token.api.json")
    _install(host, api)
    from devtools.assets import cached_sd15_checkpoint, make_photos

    ckpt = host.model_dir("checkpoints") / CKPT  # the name shrink() loads (the demo's), so the test runs alone too
    if not ckpt.exists():
        ckpt.symlink_to(cached_sd15_checkpoint("tiny", seed=0))
    if not (host.input_dir / "demo-photos").exists():
        make_photos(host.input_dir / "demo-photos", n=4, size=64, seed=0)
    prompt = shrink(api, steps=4, token="v010-token")
    r = host.run_prompt(prompt)
    assert r.ok, r.errors
    path = host.model_dir("embeddings") / "v010-token.safetensors"
    data = path.read_bytes()
    meta = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    stored = json.loads(meta["zoodip.settings"])
    train = api["5"]["inputs"]
    for key in ("init_word", "num_vectors", "learning_rate", "queries", "perturbation", "seed", "two_sided",
                "prompt_templates"):
        assert stored[key] == train[key], key
    assert stored["puts"] == {"t_min": api["3"]["inputs"]["t_min"], "t_max": api["3"]["inputs"]["t_max"]}
    assert stored["subspace"]["nu"] == api["4"]["inputs"]["nu"]
    assert stored["steps"] == 4 and stored["query_batch"] == 2  # shrunk; query_batch was added after 0.1.0's UI file
