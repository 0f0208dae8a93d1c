"""Bad input is refused with a message that says what to do, before training, writing nothing."""

from __future__ import annotations

import copy

import pytest
import torch

from .conftest import files_under
from .prompts import train_prompt

# (what is changed, expected words in the error); refused when the prompt is validated
VALIDATION_CASES = [
    ({"5": {"token_name": ""}}, "token_name is empty"),
    ({"5": {"token_name": "../x"}}, "looks like a path"),
    ({"5": {"token_name": "a/b"}}, "looks like a path"),
    ({"5": {"token_name": "con"}}, "reserved device name"),
    ({"5": {"token_name": "my dog"}}, "not allowed"),
    ({"5": {"token_name": "x" * 65}}, "at most 64"),
    ({"5": {"token_name": "hund-\u00fc"}}, "not allowed"),
    ({"5": {"token_name": "\u72d7"}}, "not allowed"),
    ({"5": {"token_name": "dog\U0001f436"}}, "not allowed"),
    ({"5": {"token_name": "a\u202eb"}}, "not allowed"),  # right-to-left override: a name that reads differently
    ({"5": {"token_name": "a\x00b"}}, "not allowed"),
    ({"5": {"token_name": "tok\n"}}, "leading or trailing spaces"),
    ({"5": {"token_name": "-rf"}}, "not allowed"),
    ({"5": {"token_name": "a..b"}}, "looks like a path"),
    ({"5": {"num_vectors": 0}}, "smaller than min"),
    ({"5": {"num_vectors": 76}}, "bigger than max"),
    ({"5": {"steps": 0}}, "smaller than min"),
    ({"5": {"queries": 0}}, "smaller than min"),
    ({"5": {"perturbation": 0.0}}, "smaller than min"),
    ({"5": {"perturbation": -1.0}}, "smaller than min"),
    ({"5": {"learning_rate": 0.0}}, "smaller than min"),
    ({"3": {"t_min": 900, "t_max": 500}}, "set t_min below t_max"),
    ({"3": {"t_min": 600, "t_max": 600}}, "set t_min below t_max"),
    ({"4": {"tau": 1}}, "smaller than min"),
    ({"4": {"nu": 0.0}}, "nu must be strictly between 0 and 1"),
    ({"4": {"nu": 1.0}}, "nu must be strictly between 0 and 1"),
]


def _with(prompt: dict, change: dict) -> dict:
    p = copy.deepcopy(prompt)
    for node, inputs in change.items():
        p[node]["inputs"].update(inputs)
    return p


def _error_text(result) -> str:
    parts = []
    for e in result.errors:
        parts.append(str(e))
    return " ".join(parts)


@pytest.mark.parametrize("change,words", VALIDATION_CASES, ids=[w for _, w in VALIDATION_CASES])
def test_refused_at_validation(host, tiny_ckpt, photos, clean_embeddings, change, words):
    prompt = train_prompt(tiny_ckpt, photos)
    prompt["9"] = {"class_type": "ZOODiPSaveEmbedding", "inputs": {"embedding": ["5", 1], "filename": "out", "overwrite": False}}
    r = host.run_prompt(_with(prompt, change))
    assert not r.ok
    assert not r.executed  # nothing ran: no checkpoint load, no training
    assert words in _error_text(r)
    assert files_under(clean_embeddings) == set()


def test_bad_save_filename_stops_training_before_it_starts(host, tiny_ckpt, photos, clean_embeddings):
    # The host drops an output whose validation fails but runs the others: Train Token is an output
    # node, so it would train for nothing. It checks the Save nodes it feeds first.
    prompt = train_prompt(tiny_ckpt, photos)
    prompt["9"] = {"class_type": "ZOODiPSaveEmbedding", "inputs": {"embedding": ["5", 1], "filename": "..\\x", "overwrite": False}}
    r = host.run_prompt(prompt)
    assert not r.ok
    by_node = {e["node_id"]: e["message"] for e in r.errors if e.get("node_id")}
    assert "looks like a path" in _error_text(r)
    assert by_node["5"].startswith("Save Embedding (node 9): filename '..\\\\x' looks like a path")
    assert "checked before training" in by_node["5"]
    assert not [e for e in r.events("progress") if e.get("node") == "5"]
    assert files_under(clean_embeddings) == set()


def _node():
    import nodes

    return nodes.NODE_CLASS_MAPPINGS["ZOODiPTrainToken"]()


def _args(**kw):
    a = dict(token_name="tok", init_word="dog", num_vectors=1, steps=3, learning_rate=5e-3, queries=1,
             perturbation=1e-3, seed=0)
    a.update(kw)
    return a


# refused when the node runs (they need the linked objects, or the host attaches a queue-time
# error to every argument of validate_inputs, so only token_name is one), before any training step
@pytest.mark.parametrize("kw,words", [
    ({"init_word": "   "}, "init_word is empty"),
    ({"prompt_templates": "a photo of a dog"}, "exactly one"),
    ({"learning_rate": float("nan")}, "learning_rate is nan"),
    ({"perturbation": float("inf")}, "perturbation (mu) is inf"),
    ({"init_word": "()"}, "has no tokens"),
    ({"init_word": "embedding:foo"}, "plain words"),
    ({"num_vectors": 0}, "num_vectors must be at least 1 and at most 75"),
    ({"steps": 0}, "steps must be at least 1"),
    ({"queries": 0}, "queries (n) must be at least 1"),
])
def test_refused_when_run(host, loaded, clean_embeddings, kw, words):
    model, clip, vae = loaded
    with torch.inference_mode(), pytest.raises(ValueError, match=None) as e:
        _node().train(model, clip, vae, torch.rand(2, 64, 64, 3), **_args(**kw))
    assert words in str(e.value)
    assert files_under(clean_embeddings) == set()


def test_no_images_refused(host, loaded, clean_embeddings):
    model, clip, vae = loaded
    with torch.inference_mode(), pytest.raises(ValueError, match="no training images"):
        _node().train(model, clip, vae, torch.zeros(0, 64, 64, 3), **_args())


def test_folder_without_images_refused(host, tiny_ckpt, clean_embeddings):
    junk = host.input_dir / "only-junk"
    junk.mkdir(exist_ok=True)
    (junk / "notes.txt").write_text("not a photo")
    prompt = train_prompt(tiny_ckpt, "only-junk")
    prompt["9"] = {"class_type": "ZOODiPSaveEmbedding", "inputs": {"embedding": ["5", 1], "filename": "out", "overwrite": False}}
    r = host.run_prompt(prompt)
    assert not r.ok
    assert "no readable images" in _error_text(r)
    assert "5" not in r.executed
    assert files_under(clean_embeddings) == set()


def test_unsupported_family_refused_before_training(host, loaded, clean_embeddings):
    import comfy.supported_models

    model, clip, vae = loaded
    # the same patcher, but claiming to be another family: detection reads the model's config
    other = model.clone()
    other.model = copy.copy(model.model)
    other.model.model_config = comfy.supported_models.SD3(dict(model.model.model_config.unet_config))
    calls = []
    hook = model.model.diffusion_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.inference_mode(), pytest.raises(ValueError, match=r"cannot train on this model \(SD3\): supported are SD1.x"):
            _node().train(other, clip, vae, torch.rand(2, 64, 64, 3), **_args())
    finally:
        hook.remove()
    assert not calls  # refused before any forward pass
