"""Reliable under Cancel, resume, bad input: nothing lost, nothing leaked.

- Cancel stops within one step and leaves the token (and its training state) in
  zoodip-runs/<token>/step-<k>.safetensors, said in the log; save_every writes the same files.
- Resuming from such a file (Load Embedding -> resume) ends bit for bit where an uninterrupted
  run ends, with the projector state mattering (tau=3 < k).
- Non-finite losses are skipped and counted; too many in a row stop the run with the last good
  token saved.
- Files: never replaced, atomic, inside the host's folders, pickles refused without running.
- Training leaves the model and CLIP sampling exactly as before, and does not leak memory.
"""

from __future__ import annotations

import copy
import errno
import gc
import logging
import math
from pathlib import Path

import pytest
import torch

from .conftest import files_under
from .prompts import train_prompt

S, K, TAU = 8, 4, 3  # total steps, stop step, projector window (refreshes at 3 and 6: its state matters)
RUNS = "zoodip-runs"


def _resume_prompt(ckpt: str, photos: str, token: str, steps: int = S, **overrides) -> dict:
    p = train_prompt(ckpt, photos, token=token, steps=steps, num_vectors=1, queries=1, **overrides)
    p["4"]["inputs"]["tau"] = TAU
    p["9"] = _SINK
    return p


# Train Token is not an output node: a prompt needs one to run (the user's has Save Embedding or a sampler)
_SINK = {"class_type": "PreviewAny", "inputs": {"source": ["5", 2]}}


def _with_resume(prompt: dict, name: str) -> dict:
    p = copy.deepcopy(prompt)
    p["6"] = {"class_type": "ZOODiPLoadEmbedding", "inputs": {"embedding_name": name}}
    p["5"]["inputs"]["resume"] = ["6", 0]
    return p


def _progress(result, node: str = "5") -> list[int]:
    return [int(e["value"]) for e in result.events("progress") if e.get("node") == node]


def _cancel_at(host, step: int, node: str = "5"):
    def on_message(m):
        if m.event == "progress" and m.data.get("node") == node and m.data["value"] == step:
            host.interrupt()

    return on_message


def _load(path: Path):
    """Load Embedding on a file under the embeddings folder."""
    import folder_paths

    import nodes

    base = Path(folder_paths.get_folder_paths("embeddings")[0])
    return nodes.NODE_CLASS_MAPPINGS["ZOODiPLoadEmbedding"]().load(str(path.relative_to(base)))[0]


def _same_state(a, b) -> None:
    """Two training states hold the same values (tensors bit for bit)."""
    assert type(a) is type(b)
    if torch.is_tensor(a):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _same_state(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same_state(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


# --- Cancel, save_every, exact resume ---------------------------------------------------------


def test_cancel_and_save_every_then_resume_is_bit_exact(host, tiny_ckpt, photos, clean_embeddings, caplog):
    import nodes

    caplog.set_level(logging.INFO, logger="zoodip")
    token = "resume-tok"
    runs = clean_embeddings / RUNS / token
    base = _resume_prompt(tiny_ckpt, photos, token)

    # an uninterrupted run of S steps that also saves every K steps
    full = host.run_prompt(_with(base, save_every=K))
    assert full.ok, full.errors
    expected = full.value("5", 1)
    assert files_under(runs) == {"step-4.safetensors", "step-4.zoodip-state", "step-8.safetensors", "step-8.zoodip-state"}
    assert torch.equal(_load(runs / "step-8.safetensors").vectors["l"], expected.vectors["l"])

    # the same run, cancelled at step K: stops there, the snapshot does not replace step-4
    caplog.clear()
    cancelled = host.run_prompt(base, on_message=_cancel_at(host, K))
    assert cancelled.interrupted and not cancelled.ok
    assert _progress(cancelled)[-1] == K  # stopped within one step
    assert files_under(runs) - {"step-4.safetensors", "step-4.zoodip-state", "step-8.safetensors", "step-8.zoodip-state"} == {
        "step-4-2.safetensors", "step-4-2.zoodip-state"}
    name = f"{RUNS}/{token}/step-4-2.safetensors"
    assert any(name in r.getMessage() and "cancelled at step 4" in r.getMessage() for r in caplog.records), caplog.text
    texts = [e["text"] for e in cancelled.events("progress_text") if e["node"] == "5"]
    assert any(name in t for t in texts), texts
    # Cancel's snapshot and save_every's are the same token and the same training state
    by_cancel, by_schedule = _load(runs / "step-4-2.safetensors"), _load(runs / "step-4.safetensors")
    assert by_cancel.state is not None and by_schedule.state is not None
    assert torch.equal(by_cancel.vectors["l"], by_schedule.vectors["l"])
    _same_state(by_cancel.state, by_schedule.state)
    assert by_cancel.state["step"] == K and by_cancel.state["projector"]["count"] == K
    assert by_cancel.state["projector"]["noise_basis"] is not None  # refreshed at step 3: it matters below

    # Load Embedding lists the snapshots (the host's list walks subfolders), never the state files
    listed = nodes.NODE_CLASS_MAPPINGS["ZOODiPLoadEmbedding"].INPUT_TYPES()["required"]["embedding_name"][0]
    assert {f"{RUNS}/{token}/step-4.safetensors", name} <= set(listed)
    assert not [n for n in listed if "zoodip-state" in n]

    # resumed from either file to S: the uninterrupted run's token, bit for bit
    for source in (name, f"{RUNS}/{token}/step-4.safetensors"):
        resumed = host.run_prompt(_with_resume(base, source))
        assert resumed.ok, resumed.errors
        assert _progress(resumed) == [K, 5, 6, 7, 8]
        got = resumed.value("5", 1)
        assert torch.equal(got.vectors["l"], expected.vectors["l"]), source
        _same_state(got.state, expected.state)
        assert resumed.value("5", 2).loss == full.value("5", 2).loss  # the loss history too, exactly

    # the state is what makes it exact: the same resume without the projector's buffer and basis drifts
    emb_io = host.pack_module.zoodip.embedding
    stripped = {**by_cancel.state, "projector": None}
    emb_io.atomic_write(runs / "no-projector.zoodip-state", emb_io.state_to_bytes(stripped))
    emb_io.save(by_cancel, runs / "no-projector.safetensors")
    drifted = host.run_prompt(_with_resume(base, f"{RUNS}/{token}/no-projector.safetensors"))
    assert drifted.ok, drifted.errors
    assert not torch.equal(drifted.value("5", 1).vectors["l"], expected.vectors["l"])


def test_snapshot_is_an_embedding_the_host_loader_reads(host, loaded, photos, clean_embeddings):
    import nodes

    _, clip, _ = loaded
    emb = _train_direct(loaded, photos, token_name="read-me", steps=2, save_every=2)
    path = clean_embeddings / RUNS / "read-me" / "step-2.safetensors"
    assert path.is_file() and (path.parent / "step-2.zoodip-state").is_file()
    enc = nodes.CLIPTextEncode()
    applied = nodes.NODE_CLASS_MAPPINGS["ZOODiPApplyEmbedding"]().apply(clip, emb, "x")[0]
    with torch.inference_mode():
        by_host = enc.encode(clip, f"a photo of embedding:{RUNS}/read-me/step-2")[0][0][0]
        by_memory = enc.encode(applied, "a photo of embedding:x")[0][0][0]
        plain = enc.encode(clip, "a photo of")[0][0][0]
    assert torch.equal(by_host, by_memory)
    assert not torch.equal(by_host, plain)


def test_resume_with_other_num_vectors_or_family_is_refused(host, loaded, clean_embeddings):
    Embedding = host.pack_module.zoodip.embedding.Embedding  # the pack's class, as Load Embedding makes

    model, clip, vae = loaded
    calls = []
    hook = model.model.diffusion_model.register_forward_hook(lambda *a: calls.append(1))
    one = torch.zeros(1, 768)
    state = {"theta": one.clone(), "step": 3, "settings": "", "family": "SD1.x"}
    cases = [
        (Embedding("t", {"l": one}, state=state), {"num_vectors": 2}, "has 1 vectors but num_vectors is 2: set num_vectors to 1"),
        (Embedding("t", {"l": torch.zeros(2, 768)}), {"num_vectors": 1}, "has 2 vectors but num_vectors is 1"),
        (Embedding("t", {"l": one}, state={**state, "family": "SDXL"}), {}, "was trained on SDXL, but this model is SD1.x"),
        (Embedding("t", {"l": one}, {"zoodip.family": "SD2.x"}), {}, "was trained on SD2.x"),
        (Embedding("t", {"l": one, "g": torch.zeros(1, 1280)}), {}, "two text encoders (SDXL)"),
        (Embedding("t", {"l": torch.zeros(1, 1024)}), {}, "width 1024"),
    ]
    try:
        for resume, kw, words in cases:
            with torch.inference_mode(), pytest.raises(ValueError) as e:
                _node().train(model, clip, vae, torch.rand(2, 64, 64, 3), **_args(resume=resume, **kw))
            assert words in str(e.value), (words, str(e.value))
    finally:
        hook.remove()
    assert not calls  # refused before any forward pass
    assert files_under(clean_embeddings) == set()


def test_resume_with_changed_settings_applies_the_new_values(host, loaded, photos, clean_embeddings, caplog):
    caplog.set_level(logging.WARNING, logger="zoodip")
    first = _train_direct(loaded, photos, token_name="chg", steps=1, subspace_tau=TAU)
    assert first.state["optimizer"]["lr"] == 5e-3 and first.state["projector"]["tau"] == TAU
    caplog.clear()
    second = _train_direct(loaded, photos, token_name="chg", steps=2, resume=first, learning_rate=1e-2, seed=5,
                           subspace_tau=TAU + 1)
    s = second.state
    assert s["step"] == 2 and s["seed"] == 5 and s["optimizer"]["lr"] == 1e-2 and s["optimizer"]["t"] == 2
    assert s["projector"]["tau"] == TAU + 1 and s["projector"]["count"] == 1  # new window: started again
    assert "learning_rate: 0.005 -> 0.01" in caplog.text and "seed: 0 -> 5" in caplog.text
    assert "subspace" in caplog.text


# --- non-finite losses ----------------------------------------------------------------------------


def _nan_prompt(ckpt, photos, token, steps, tag, **overrides):
    p = train_prompt(ckpt, photos, token=token, steps=steps, num_vectors=1, queries=1, **overrides)
    p["7"] = {"class_type": "ZoodipTestNaNModel", "inputs": {"model": ["1", 0], "tag": tag}}
    p["5"]["inputs"]["model"] = ["7", 0]
    p["9"] = _SINK
    return p


def test_non_finite_steps_are_skipped_and_counted(host, tiny_ckpt, photos, clean_embeddings, nan_model, caplog):
    caplog.set_level(logging.WARNING, logger="zoodip")
    nan_model["on"] = False

    def flip(m):  # NaN for steps 2 and 3 only
        if m.event == "progress" and m.data.get("node") == "5":
            nan_model["on"] = m.data["value"] in (1, 2)

    r = host.run_prompt(_nan_prompt(tiny_ckpt, photos, "some-nan", 4, "partial"), on_message=flip)
    assert r.ok, r.errors
    history = r.value("5", 2)
    assert [math.isnan(x) for x in history.loss] == [False, True, True, False]
    assert history.skipped_steps == 2
    assert "step 3 skipped: non-finite loss (2 skipped so far)" in caplog.text
    assert torch.isfinite(r.value("5", 1).vectors["l"]).all()


@pytest.mark.parametrize("save_every", [0, 1])  # 1: a scheduled save of the untouched token is no save either
def test_only_non_finite_losses_stop_and_save_nothing(host, tiny_ckpt, photos, clean_embeddings, nan_model, save_every):
    r = host.run_prompt(_nan_prompt(tiny_ckpt, photos, "all-nan", 20, f"all-{save_every}", save_every=save_every))
    assert not r.ok and not r.interrupted
    (err,) = r.errors
    assert err["node_id"] == "5" and err["exception_type"].endswith("NonFiniteLossError")
    assert "5 steps in a row gave non-finite losses" in err["message"]
    # the token never left its start (the init word's vectors): nothing to save, and the error says so
    assert "No step of this run changed the token, so nothing was saved (it is still init_word 'dog')" in err["message"]
    assert _progress(r)[-1] == 4  # the 5th bad step raises before it is reported
    assert files_under(clean_embeddings) == set()


@pytest.mark.parametrize("save_every", [0, 1])
def test_a_short_run_whose_every_step_was_skipped_fails_and_saves_nothing(host, tiny_ckpt, photos, clean_embeddings,
                                                                          nan_model, save_every):
    # 3 steps, fewer than the 5 in a row that stop a run: it used to report success with the untrained token
    p = _nan_prompt(tiny_ckpt, photos, "short-nan", 3, f"short-{save_every}", save_every=save_every)
    p["9"] = {"class_type": "ZOODiPSaveEmbedding", "inputs": {"embedding": ["5", 1], "filename": "", "overwrite": False}}
    r = host.run_prompt(p)
    assert not r.ok
    (err,) = r.errors
    assert err["node_id"] == "5" and err["exception_type"].endswith("NothingLearnedError")
    assert "all 3 steps of this run gave non-finite losses (NaN/inf) and were skipped" in err["message"]
    assert "nothing is returned or saved" in err["message"] and "saved as" not in err["message"]
    assert "9" not in r.executed and files_under(clean_embeddings) == set()


def test_a_save_that_fails_after_an_error_is_reported_with_the_last_saved_token(
        host, tiny_ckpt, photos, clean_embeddings, nan_model, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="zoodip")
    train = host.pack_module.nodes.train
    real, calls = train.save_snapshot, []

    def disk_fills_after_one(emb, step):
        calls.append(step)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(emb, step)

    monkeypatch.setattr(train, "save_snapshot", disk_fills_after_one)
    nan_model["on"] = False

    def flip(m):  # steps 1 and 2 train; from step 3 on every loss is NaN, so step 7 stops the run
        if m.event == "progress" and m.data.get("node") == "5":
            nan_model["on"] = m.data["value"] >= 2

    r = host.run_prompt(_nan_prompt(tiny_ckpt, photos, "full-disk", 20, "full-disk", save_every=1), on_message=flip)
    (err,) = r.errors
    assert err["node_id"] == "5" and err["exception_type"].endswith("NonFiniteLossError")
    msg = err["message"]
    assert "5 steps in a row gave non-finite losses" in msg
    # step 2's token was never written: every later save retries it, the last one when the error stops the run
    assert calls == [1, 2, 3, 4, 5, 6, 7]
    assert (f"Could not save the token learned since step 1: [Errno {errno.ENOSPC}] No space left on device; the last "
            f"saved token is {RUNS}/full-disk/step-1.safetensors.") in msg, msg
    assert "No step of this run changed the token" not in msg and "nothing to save" not in caplog.text
    assert files_under(clean_embeddings) == {f"{RUNS}/full-disk/step-1.safetensors", f"{RUNS}/full-disk/step-1.zoodip-state"}


def test_resume_with_the_default_templates_written_either_way_is_no_change(host, caplog):
    # "" (the command line before 0.2, TrainSettings' old default) and the widget's default text are the same
    # 27 templates: resuming across them is no settings change
    caplog.set_level(logging.WARNING, logger="zoodip")
    pack = host.pack_module
    TrainSettings, SETTINGS = pack.zoodip.settings.TrainSettings, pack.zoodip.settings.SETTINGS
    Embedding = pack.zoodip.embedding.Embedding
    family = pack.nodes.host.Family("SD1.x", ("l",), (768,), 1000, 1e-3, 900)
    theta = torch.zeros(1, 768)
    z = pack.zoodip
    t = theta.clone()
    state = z.ZOTrainer(t, lambda *a: None, z.RandomGradientEstimator(), z.paper_adam(t)).state_dict()
    default = SETTINGS["prompt_templates"].default
    for stored, current in (("", default), (default, "")):
        caplog.clear()
        settings = TrainSettings(token_name="tok", prompt_templates=stored).to_metadata()["zoodip.settings"]
        emb = Embedding("tok", {"l": theta}, state={**state, "step": 1, "settings": settings, "family": "SD1.x"})
        pack.nodes.train.check_resume(emb, TrainSettings(token_name="tok", prompt_templates=current), family)
        assert "changed settings" not in caplog.text, caplog.text
    pack.nodes.train.check_resume(emb, TrainSettings(token_name="tok", prompt_templates="a {token}"), family)
    assert "changed settings prompt_templates" in caplog.text  # a real change is still reported


# --- files ----------------------------------------------------------------------------------------


def test_malicious_pickle_is_refused_without_running_it(host, tiny_ckpt, clean_embeddings, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"string_to_param": {"*": Evil()}}, clean_embeddings / "evil.pt")
    r = host.run_prompt({"1": {"class_type": "ZOODiPLoadEmbedding", "inputs": {"embedding_name": "evil.pt"}},
                         "2": {"class_type": "ZOODiPSaveEmbedding", "inputs": {"embedding": ["1", 0], "filename": "copy", "overwrite": False}}})
    assert not r.ok
    assert "could not be read safely (weights_only)" in r.errors[0]["message"]
    assert not marker.exists()
    assert files_under(clean_embeddings) == {"evil.pt"}
    # the payload is live: the pickle calls open(), which an unsafe load would run (asked of torch without loading)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(clean_embeddings / "evil.pt") == ["io.open"]


def test_snapshots_never_replace_and_leave_no_temp_files(host, clean_embeddings):
    common = host.pack_module.nodes.common
    Embedding = host.pack_module.zoodip.embedding.Embedding

    emb = Embedding("snap", {"l": torch.ones(1, 768)}, state={"theta": torch.ones(1, 768), "step": 3})
    paths = [common.save_snapshot(emb, 3) for _ in range(3)]
    assert [p.name for p in paths] == ["step-3.safetensors", "step-3-2.safetensors", "step-3-3.safetensors"]
    assert files_under(clean_embeddings) == {f"{RUNS}/snap/{n}" for n in (
        "step-3.safetensors", "step-3.zoodip-state", "step-3-2.safetensors", "step-3-2.zoodip-state",
        "step-3-3.safetensors", "step-3-3.zoodip-state")}
    # a zoodip-runs folder that leads outside the host's embeddings folder is refused
    for p in (clean_embeddings / RUNS).iterdir():
        for f in p.iterdir():
            f.unlink()
        p.rmdir()
    (clean_embeddings / RUNS).rmdir()
    outside = clean_embeddings.parent.parent / "elsewhere"
    outside.mkdir(exist_ok=True)
    (clean_embeddings / RUNS).symlink_to(outside, target_is_directory=True)
    try:
        with pytest.raises(ValueError, match="not inside the embeddings folder"):
            common.save_snapshot(emb, 3)
        assert not any(outside.iterdir())
    finally:
        (clean_embeddings / RUNS).unlink()
        outside.rmdir()


def test_save_embedding_files(host, clean_embeddings):
    import nodes

    Embedding = host.pack_module.zoodip.embedding.Embedding

    save = nodes.NODE_CLASS_MAPPINGS["ZOODiPSaveEmbedding"]
    load = nodes.NODE_CLASS_MAPPINGS["ZOODiPLoadEmbedding"]()
    a = Embedding("my.v1", {"l": torch.ones(1, 768)}, state=_state(host, torch.ones(1, 768), 1))
    b = Embedding("my.v2", {"l": torch.full((1, 768), 2.0)}, state=_state(host, torch.full((1, 768), 2.0), 2))
    save().save(a, "", False)
    save().save(b, "", False)
    # dotted names keep separate states
    assert files_under(clean_embeddings) == {"my.v1.safetensors", "my.v1.zoodip-state", "my.v2.safetensors", "my.v2.zoodip-state"}
    assert load.load("my.v1.safetensors")[0].state["step"] == 1
    assert load.load("my.v2.safetensors")[0].state["step"] == 2
    # no overwrite unless asked: the file and its state are left as they were
    before = (clean_embeddings / "my.v1.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="set overwrite to replace it"):
        save().save(b, "my.v1", False)
    assert (clean_embeddings / "my.v1.safetensors").read_bytes() == before
    # replaced by an embedding without state: the old state must not come back with it
    save().save(Embedding("x", {"l": torch.zeros(1, 768)}), "my.v1", True)
    assert not (clean_embeddings / "my.v1.zoodip-state").exists()
    assert load.load("my.v1.safetensors")[0].state is None
    # a state that does not belong to the vectors beside it (file swapped by hand) is ignored
    (clean_embeddings / "my.v2.zoodip-state").rename(clean_embeddings / "my.v1.zoodip-state")
    assert load.load("my.v1.safetensors")[0].state is None
    (clean_embeddings / "my.v1.zoodip-state").write_bytes(b"garbage")
    assert load.load("my.v1.safetensors")[0].state is None  # damaged: the embedding still loads
    # names that leave the folder are refused at validation
    for bad in ("../x", "a/b", "..", "con"):
        assert save.validate_inputs(bad) is not True
    assert not list(clean_embeddings.rglob("*.tmp"))


def _state(host, theta: torch.Tensor, step: int) -> dict:
    """A complete training state for ``theta`` at ``step``, as the pack's trainer writes it."""
    z = host.pack_module.zoodip
    t = theta.clone()
    state = z.ZOTrainer(t, lambda *a: None, z.RandomGradientEstimator(), z.paper_adam(t)).state_dict()
    return {**state, "step": step}


# --- nothing leaked -------------------------------------------------------------------------------


def _fingerprint(model, clip) -> dict:
    def params(module):
        return {k: (v.dtype, v.device, v.requires_grad) for k, v in module.named_parameters()}

    def hooks(module):
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())

    tok = clip.tokenizer
    return {
        "model_options": repr(model.model_options),
        "patches": dict(model.patches), "object_patches": dict(model.object_patches),
        "current_patcher": model.model.current_patcher,
        "unet": params(model.model), "te": params(clip.cond_stage_model),
        "hooks": (hooks(model.model), hooks(clip.cond_stage_model)),
        "tokenizer": (id(tok), id(tok.clip_l), sorted(vars(tok.clip_l))),
        "clip_patches": dict(clip.patcher.patches), "layer_idx": clip.layer_idx,
        "grad": torch.is_grad_enabled(),
    }


def _sample(model, clip, prompt: str):
    import nodes

    enc = nodes.CLIPTextEncode()
    with torch.inference_mode():
        pos, neg = enc.encode(clip, prompt)[0], enc.encode(clip, "")[0]
        latent = {"samples": torch.zeros(1, 4, 8, 8)}
        return nodes.KSampler().sample(model, 3, 2, 5.0, "euler", "normal", pos, neg, latent)[0]["samples"]


def test_model_and_clip_sample_exactly_as_before_training(host, loaded, photos, clean_embeddings):
    model, clip, _ = loaded
    before = _fingerprint(model, clip)
    latents = _sample(model, clip, "a photo of a dog")
    unknown = _sample(model, clip, "a photo of embedding:leak-tok")
    _train_direct(loaded, photos, token_name="leak-tok", steps=2, save_every=1)
    assert _fingerprint(model, clip) == before
    assert torch.equal(_sample(model, clip, "a photo of a dog"), latents)
    # the base CLIP still does not know the token (only the node's output CLIP does)
    assert torch.equal(_sample(model, clip, "a photo of embedding:leak-tok"), unknown)


def test_repeated_trainings_do_not_grow_memory(host, loaded, photos, clean_embeddings):
    import psutil

    proc = psutil.Process()
    rss = []
    for i in range(5):
        _train_direct(loaded, photos, token_name=f"mem-{i}", steps=2, seed=i, save_every=1)
        gc.collect()
        rss.append(proc.memory_info().rss)
    growth = (rss[4] - rss[1]) / rss[1]
    assert growth <= 0.02, [f"{r / 2**20:.0f} MiB" for r in rss]


# --- helpers ---------------------------------------------------------------------------------------


def _with(prompt: dict, **train_inputs) -> dict:
    p = copy.deepcopy(prompt)
    p["5"]["inputs"].update(train_inputs)
    return p


def _node():
    import nodes

    return nodes.NODE_CLASS_MAPPINGS["ZOODiPTrainToken"]()


def _args(**kw):
    a = dict(token_name="tok", init_word="dog", num_vectors=1, steps=3, learning_rate=5e-3, queries=1,
             perturbation=1e-3, seed=0)
    a.update(kw)
    return a


def _train_direct(loaded, photos, subspace_tau: int = TAU, **kw):
    """Train Token called as the executor calls it (inference mode), on the session's loaded model."""
    import nodes

    model, clip, vae = loaded
    cfg = nodes.NODE_CLASS_MAPPINGS
    images = cfg["ZOODiPLoadImages"]().load(photos, 64)[0]
    args = _args(puts=cfg["PUTSSamplerConfig"]().make(500, 900)[0], subspace=cfg["SubspaceProjector"]().make(subspace_tau, 1e-3)[0],
                 prompt_templates="a photo of a {token}\na {token}")
    args.update(kw)
    with torch.inference_mode():
        return _node().train(model, clip, vae, images, **args)[1]

