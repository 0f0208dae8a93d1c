"""The toy model's pieces at smoke size: the data set, the checkpoint in the host, the classifier.

The full model (15 min of training) is not built here; the smoke one trains 2 steps, so its
images mean nothing, but every path the full one takes (host detection, loading, sampling,
decoding, classifying) runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.toymodel import data


def test_dataset_is_deterministic_and_hides_the_held_out_concept():
    a, b = data.make_set(3, 32, seed=5), data.make_set(3, 32, seed=5)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.concept, b.concept)
    assert not np.array_equal(a.images, data.make_set(3, 32, seed=6).images)
    assert a.images.shape == (3 * len(data.CONCEPTS), 32, 32, 3)
    # the held-out concept's images are in the set...
    held = data.CONCEPTS.index(data.HELD_OUT)
    assert (a.concept == held).sum() == 3
    # ...but no caption names it, nor either of its words
    words = data.words_named()
    assert data.HELD_OUT[0] not in words and data.HELD_OUT[1] not in words
    captions = data.sample_captions(np.full(500, held), np.random.default_rng(0))
    assert set(captions) <= set(data.GENERIC) | {data.EMPTY}
    for c, s in data.TRAINED:
        assert data.caption(c, s) in data.all_captions()
    # images differ by concept: the colour is where the shape is
    assert a.images[a.concept == 0].mean() != a.images[a.concept == held].mean()


@pytest.fixture(scope="module")
def toy(host):
    from benchmarks.toymodel import check, model

    path = model.cached("smoke", say=lambda _m: None)
    return path, check.load_in_host(host, path, "zoodip-toy-smoke.safetensors")


def test_checkpoint_loads_in_host_and_samples(toy):
    from benchmarks.toymodel import check, model

    path, (m, clip, vae) = toy
    assert type(m.model.model_config).__name__ == "SD15"
    assert vae.downscale_ratio == 4
    info = model.info(path)
    assert info["settings"] == model.settings_for("smoke") and info["held_out"] == "purple cross"
    with torch.inference_mode():
        imgs = check.sample(m, clip, vae, "a red circle", 2, seed=0, steps=2)
        other = check.sample(m, clip, vae, "a blue square", 2, seed=0, steps=2)
    assert imgs.shape == (2, 32, 32, 3) and torch.isfinite(imgs).all()
    # the caption reaches the UNet (random-ish weights, but conditioning still moves the output)
    assert not torch.equal(imgs, other)


def test_vae_round_trip_is_recognisable(toy):
    from benchmarks.toymodel import classifier

    _, (_m, _clip, vae) = toy
    s = data.make_set(1, 32, seed=3)
    out = classifier.roundtrip(vae, s.images)
    err = (out - torch.from_numpy(s.floats())).abs().mean()
    assert err < 0.08, err  # blurred edges only


def test_closed_form_round_trip_is_the_host_vae_round_trip(toy):
    """The judge trains on vae.roundtrip (closed form, ~1000x cheaper); it must be what the host's
    VAE does to an image, or the judge would learn other images than the samples it judges."""
    from benchmarks.toymodel import classifier
    from benchmarks.toymodel import vae as toy_vae

    _, (_m, _clip, vae) = toy
    s = data.make_set(1, 32, seed=9, concepts=data.ALL_CONCEPTS[::3])
    host = classifier.roundtrip(vae, s.images)
    fast = toy_vae.roundtrip(torch.from_numpy(s.floats()))
    assert (host - fast).abs().max() < 5e-3, (host - fast).abs().max()
    assert (host - torch.from_numpy(s.floats())).abs().mean() > 0.02  # and it is not the identity


def test_judge_sees_shape_apart_from_colour():
    """The judge is trained on every colour x shape combination: a purple square is a square and a
    red cross a cross. The v1 judge (trained on the toy set's 13 concepts, where purple occurs only
    in crosses) called every purple shape a cross and every non-purple cross a circle or triangle.
    A small judge (smoke size, no cache, no host) already must get this right."""
    from benchmarks.toymodel import classifier

    clf = classifier.train(None, per_concept=16, steps=1200, seed=1000)  # ~3 CPU-minutes; 400 steps: shapes not yet
    per = classifier.per_combination(clf, None, per_concept=12)
    for name in ("purple square", "purple circle", "purple triangle", "red cross", "green cross", "yellow cross"):
        assert per[name]["shape"] >= 0.5, (name, per[name])
        assert per[name]["colour"] >= 0.9, (name, per[name])
    assert min(v["both"] for v in per.values()) >= 0.5, per


def test_held_out_concept_is_a_parameter():
    held = data.parse_held_out("Red, Circle")
    assert held == ("red", "circle")
    table = data.concepts(held)
    assert len(table) == 13 and table[-1] == held
    assert all(c != "red" and s != "circle" for c, s in table[:-1])
    words = data.words_named(held)
    assert "red" not in words and "circle" not in words and "purple" in words and "cross" in words
    # the same drawn image of a concept whatever else the set holds
    a = data.make_set(2, 32, 5, concepts=(("purple", "cross"),))
    b = data.make_set(2, 32, 5)
    assert np.array_equal(a.images[0], b.images[b.concept == len(b_concepts := data.CONCEPTS) - 1][0])
    assert b_concepts[-1] == ("purple", "cross")
    for bad in ("pink,cross", "purple", "purple,cross,red", "cross,purple"):
        with pytest.raises(ValueError, match="COLOUR,SHAPE"):
            data.parse_held_out(bad)
    from benchmarks.toymodel import model

    assert model.checkpoint_path("full") != model.checkpoint_path("full", model.settings_for("full", held_out="red,circle"))
    assert model.settings_for("full", held_out="Purple , cross") == model.settings_for("full")  # one spelling, one key
    for key in ("steps", "threads"):  # refused for API callers too, not only by the CLIs
        with pytest.raises(ValueError, match=f"{key} must be >= 1"):
            model.settings_for("full", **{key: 0})


def test_toy_workflow_runs_on_the_toy_checkpoint(host, toy):
    """workflows/train_token_toy.json, as installed by `build --comfyui`, with the smoke model."""
    import json
    from pathlib import Path

    from benchmarks.toymodel import install, workflow
    from devtools.host import load_api_workflow
    from devtools.workflows import ui_to_api

    path, _ = toy
    wf = Path(workflow.ROOT) / "workflows"
    assert json.loads((wf / "train_token_toy.json").read_text()) == workflow.make()  # the shipped file is the generated one
    api = load_api_workflow(wf / "api" / "train_token_toy.api.json")
    assert api == ui_to_api(workflow.make(), host.node_class_mappings)
    # install into the test host's tree the way a user installs into ComfyUI
    link = host.model_dir("checkpoints") / workflow.CKPT
    if not link.exists():
        link.symlink_to(path)
    (host.base / "input").mkdir(exist_ok=True)
    install.photos(host.base)
    by_type = {v["class_type"]: k for k, v in api.items()}
    train = api[by_type["ZOODiPTrainToken"]]["inputs"]
    train.update(steps=4, held_out_every=2, preview_every=2, token_name="toy-wf")
    api[by_type["SubspaceProjector"]]["inputs"]["tau"] = 2
    api[by_type["ZOODiPSaveEmbedding"]]["inputs"].update(filename="toy-wf", overwrite=True)
    for node in api.values():
        if node["class_type"] == "CLIPTextEncode":
            node["inputs"]["text"] = node["inputs"]["text"].replace(f"embedding:{workflow.TOKEN}", "embedding:toy-wf")
    api[by_type["KSampler"]]["inputs"]["steps"] = 2
    r = host.run_prompt(api)
    assert r.ok, r.errors
    assert (host.model_dir("embeddings") / "toy-wf.safetensors").is_file()
    previews = r.value(by_type["ZOODiPTrainToken"], 3)
    assert previews.shape == (2, 32, 32, 3)  # two previews at the toy model's 32 px
    images = r.value(by_type["VAEDecode"], 0)
    assert images.shape == (4, 32, 32, 3)


def test_workflow_command_queues_the_shipped_workflow_and_classifies_its_previews(tmp_path):
    """``python -m benchmarks.toymodel workflow``: the check (docs/benchmarks.md) that the previews turn into
    the concept; in a subprocess (its own headless host), smoke model, 4 steps."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out, grid = tmp_path / "wf.json", tmp_path / "wf.png"
    cmd = [sys.executable, "-m", "benchmarks.toymodel", "workflow", "--size", "smoke", "--steps", "4",
           "--out", str(out), "--grid", str(grid)]
    p = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["steps"] == 4 and r["preview_steps"] == [2, 4] and len(r["preview_is_concept"]) == 2
    assert r["init_word"] == data.TOKEN_INIT_WORD and r["final_images"] == 4 and 0.0 <= r["final_accuracy"] <= 1.0
    assert grid.stat().st_size > 0


def test_build_gives_the_same_weights_whatever_the_callers_thread_count(toy, tmp_path):
    """The build runs with its own thread count (a setting), so a caller with another one gets the
    same weights; the checksum every result file records is over the tensors, not the header."""
    from benchmarks.toymodel import model

    path, _ = toy
    before = torch.get_num_threads()
    torch.set_num_threads(3 if before != 3 else 2)
    try:
        again = model.build("smoke", tmp_path / "again.safetensors", say=lambda _m: None)
        assert torch.get_num_threads() == (3 if before != 3 else 2)  # the caller's count is restored
    finally:
        torch.set_num_threads(before)
    assert model.info(again)["torch_threads"] == model.settings_for("smoke")["threads"] == 1
    described = model.describe(again)
    assert described["weights_sha256"] == model.describe(path)["weights_sha256"] == model.info(path)["weights_sha256"]
    assert "weights_sha256_mismatch" not in described
    # the key holds the thread count: another count is another model, never the same file name
    assert model.checkpoint_path("smoke") != model.checkpoint_path("smoke", model.settings_for("smoke", threads=2))


def test_judge_gets_the_same_weights_whatever_the_callers_thread_count():
    """The judge trains at classifier.THREADS, so figures do not depend on who trained it first."""
    from benchmarks.toymodel import classifier

    before = torch.get_num_threads()
    nets = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            nets.append(classifier.train(None, per_concept=4, steps=20).net.state_dict())
            assert torch.get_num_threads() == n  # the caller's count is restored
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])
