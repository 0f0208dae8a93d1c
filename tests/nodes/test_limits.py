"""Every declared limit is enforced when the prompt is queued, and the error is attached to the
input it is about (the host marks exactly the inputs named in ``extra_info.input_name``).

0.1.0 let the host skip its own min/max check for every input its VALIDATE_INPUTS took as an
argument: learning_rate 1e9 trained, perturbation inf was queued, a huge tau failed in the
allocator, PUTS above 1000 was clamped; and one bad token_name was reported on five widgets.
"""

from __future__ import annotations

import copy
import math

import pytest

from .conftest import files_under
from .prompts import train_prompt

# node id in the prompt below -> the numeric table settings it shows
WIDGETS = {
    "2": ("resolution",),
    "3": ("t_min", "t_max"),
    "4": ("tau", "nu"),
    "5": ("num_vectors", "steps", "learning_rate", "queries", "perturbation", "seed", "held_out_every",
          "save_every", "preview_every", "query_batch"),
    "6": ("smoothing",),
}
# the one node whose check is a relation between two inputs: its errors concern both
RELATED = {"t_min": {"t_min", "t_max"}, "t_max": {"t_min", "t_max"}}


def _prompt(ckpt, photos):
    p = train_prompt(ckpt, photos)
    p["6"] = {"class_type": "ZOODiPLossGraph", "inputs": {"loss": ["5", 2], "smoothing": 0.9}}
    return p


def _cases():
    from zoodip.settings import SETTINGS

    out = []
    for node, names in WIDGETS.items():
        for name in names:
            s = SETTINGS[name]
            below = s.min - 1 if s.kind is int else (s.min if s.min_exclusive else -1.0)
            above = s.max + 1 if s.kind is int else (s.max if s.max_exclusive else s.max * 10 + 1)
            out += [(node, name, below), (node, name, above)]
            if s.kind is float:
                out += [(node, name, math.inf), (node, name, -math.inf)]
    out += [("4", "nu", math.nan), ("6", "smoothing", math.nan), ("5", "learning_rate", 1e9),
            ("5", "perturbation", math.inf), ("4", "tau", 10**12), ("3", "t_max", 5000), ("3", "t_min", 1500)]
    return out


CASES = _cases()


@pytest.mark.parametrize("node,name,value", CASES, ids=[f"{n}-{v}" for _, n, v in CASES])
def test_out_of_range_refused_at_queue_on_that_input(host, tiny_ckpt, photos, node, name, value):
    prompt = _prompt(tiny_ckpt, photos)
    prompt[node]["inputs"][name] = value
    errors = host.validate(prompt)
    assert errors, f"{name}={value!r} was accepted"
    marked = {e.get("extra_info", {}).get("input_name") for e in errors}
    assert marked <= RELATED.get(name, {name}), f"{name}={value!r} marked {marked}: {errors}"
    assert {e["node_id"] for e in errors} == {node}
    text = " ".join(f"{e['message']} {e['details']}" for e in errors)
    from zoodip.settings import fmt

    assert str(value) in text or fmt(value) in text, f"the user's value {value!r} is not quoted: {text}"


def test_the_declared_limits_themselves_pass(host, tiny_ckpt, photos):
    from zoodip.settings import SETTINGS

    for node, names in WIDGETS.items():
        for name in names:
            s = SETTINGS[name]
            for value in (s.min, s.max):
                if (value == s.min and s.min_exclusive) or (value == s.max and s.max_exclusive):
                    continue
                prompt = _prompt(tiny_ckpt, photos)
                prompt[node]["inputs"][name] = value
                if name == "t_min":
                    prompt["3"]["inputs"]["t_max"] = 1000
                if name == "t_max" and value == s.min:
                    prompt["3"]["inputs"]["t_min"] = 0
                assert host.validate(prompt) == [], (name, value)


@pytest.mark.parametrize("name,value", [("token_name", "a/b"), ("token_name", "my dog"), ("token_name", "")])
def test_one_bad_value_is_reported_on_its_own_widget(host, tiny_ckpt, photos, name, value):
    prompt = _prompt(tiny_ckpt, photos)
    prompt["5"]["inputs"][name] = value
    errors = host.validate(prompt)
    assert len(errors) == 1, errors
    assert errors[0]["extra_info"]["input_name"] == name


def test_nan_step_size_refused_before_training(host, tiny_ckpt, photos, clean_embeddings):
    """nan passes the host's min/max comparison (an API client's json.dumps sends NaN): the node
    refuses it when it starts, before the model is touched, and writes nothing."""
    prompt = _prompt(tiny_ckpt, photos)
    prompt["5"]["inputs"]["learning_rate"] = math.nan
    prompt["5"]["inputs"]["save_every"] = 1
    r = host.run_prompt(prompt)
    assert not r.ok
    assert "learning_rate is nan" in str(r.errors)
    assert files_under(clean_embeddings) == set()


def test_huge_tau_refused_before_any_run_folder(host, tiny_ckpt, photos, clean_embeddings):
    prompt = _prompt(tiny_ckpt, photos)
    prompt["4"]["inputs"]["tau"] = 10**12
    prompt["5"]["inputs"]["save_every"] = 1
    r = host.run_prompt(prompt)
    assert not r.ok and not r.executed
    assert "bigger than max" in str(r.errors)
    assert files_under(clean_embeddings) == set() and not (clean_embeddings / "zoodip-runs").exists()
    # and the node itself refuses it, if called without the host's check
    import nodes

    with pytest.raises(ValueError, match="tau must be at least 2 and at most 4096, got 1000000000000"):
        nodes.NODE_CLASS_MAPPINGS["SubspaceProjector"].execute(10**12, 1e-3)


def test_puts_above_the_models_timesteps_is_refused_not_clamped(host, tiny_ckpt, photos):
    import nodes

    with pytest.raises(ValueError, match="t_max must be at least 1 and at most 1000, got 1500"):
        nodes.NODE_CLASS_MAPPINGS["PUTSSamplerConfig"].execute(500, 1500)
    prompt = _prompt(tiny_ckpt, photos)
    prompt["3"]["inputs"]["t_max"] = 1500
    errors = host.validate(copy.deepcopy(prompt))
    assert "got 1500" in str(errors) and "1000" in str(errors)
