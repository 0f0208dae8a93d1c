"""The shipped workflows: the API file is the UI file converted, and it runs in the host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.demo import CKPT, shrink
from devtools.host import load_api_workflow
from devtools.workflows import ui_to_api

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))


def test_there_are_shipped_workflows():
    assert [p.name for p in UI_FILES] == ["train_token.json", "train_token_sdxl.json", "train_token_toy.json"]


@pytest.mark.parametrize("ui_path", UI_FILES, ids=lambda p: p.name)
def test_api_file_is_the_ui_file_converted(host, ui_path):
    api_path = WORKFLOWS / "api" / (ui_path.stem + ".api.json")
    ui = json.loads(ui_path.read_text())
    assert ui_to_api(ui, host.node_class_mappings) == load_api_workflow(api_path)
    # every node type exists in the host with the pack loaded (no "missing nodes")
    assert {n["type"] for n in ui["nodes"]} <= set(host.node_class_mappings)


def test_shipped_train_token_workflow_runs(host):
    from devtools.assets import cached_sd15_checkpoint, make_photos

    ckpt = host.model_dir("checkpoints") / CKPT
    if not ckpt.exists():
        ckpt.symlink_to(cached_sd15_checkpoint("tiny", seed=0))
    if not (host.input_dir / "demo-photos").exists():
        make_photos(host.input_dir / "demo-photos", n=4, size=64, seed=0)
    prompt = shrink(load_api_workflow(WORKFLOWS / "api" / "train_token.api.json"), steps=8, token="wf-token")
    before = set(host.output_files())
    r = host.run_prompt(prompt)
    assert r.ok, r.errors
    assert (host.model_dir("embeddings") / "wf-token.safetensors").is_file()
    assert len(set(host.output_files()) - before) == 1
    texts = [e["text"] for e in r.events("progress_text")]
    assert any(t.startswith("step 8/8") and "it/s" in t for t in texts)
