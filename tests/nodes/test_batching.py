"""One step = one batched text-encoder call + one batched UNet call, with the same losses as n+1
separate calls; the reported clean loss is L(theta) from that same call; progress shows it/s."""

from __future__ import annotations

import importlib
import re
from contextlib import contextmanager

import pytest
import torch

from .prompts import train_prompt

# Batched and per-query evaluations run different matrix shapes, so they agree to float
# rounding, not bit for bit. The losses here are ~1 (eps-MSE); rounding is ~1e-7 of that.
RTOL, ATOL = 1e-5, 1e-7


def _pack(host, name: str):
    return importlib.import_module(f"{host.pack_module.__name__}.{name}")


@pytest.fixture(scope="module")
def prepared(host, loaded, photos):
    """A prepared run on the tiny checkpoint (references encoded once), and its pieces."""
    import nodes

    training = _pack(host, "nodes.training")
    settings_mod = _pack(host, "zoodip.settings")
    model, clip, vae = loaded
    images = nodes.NODE_CLASS_MAPPINGS["ZOODiPLoadImages"]().load(photos, 64)[0]
    settings = settings_mod.TrainSettings(
        token_name="batching", init_word="dog", num_vectors=2, steps=10, queries=2,
        puts=settings_mod.PUTSConfig(500, 900), prompt_templates="a photo of a {token}\na {token} on a table",
    )
    with torch.inference_mode():  # as the executor runs nodes
        run = training.prepare(model, clip, vae, images, settings)
    return run


@contextmanager
def _counting(run):
    """Batch sizes of every text-encoder and UNet forward while the block runs."""
    calls = {"text_encoder": [], "unet": []}
    clip, model = run.clip, run.model
    te = [getattr(clip.cond_stage_model, f"clip_{k}").transformer for k in run.family.encoders]

    def on(name):
        def hook(_m, args, kwargs):
            x = kwargs.get("embeds")
            if x is None:
                x = args[0]
            calls[name].append(int(x.shape[0]))

        return hook

    handles = [m.register_forward_pre_hook(on("text_encoder"), with_kwargs=True) for m in te]
    handles.append(model.model.diffusion_model.register_forward_pre_hook(on("unet"), with_kwargs=True))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _session(host, run):
    h = _pack(host, "nodes.host")
    with torch.inference_mode(), h.sampling_session(run.model, run.clip):
        yield


def _loss_like(host, base, max_batch):
    DenoisingLoss = _pack(host, "zoodip.loss").DenoisingLoss
    return DenoisingLoss(base.latents, base.encode, base.denoise, base.sampling, base.num_templates, base.timesteps,
                         max_batch=max_batch)


@pytest.mark.parametrize(("n", "two_sided"), [(1, False), (2, False), (4, False), (2, True)],
                         ids=["n1", "n2", "n4", "n2-two-sided"])
def test_batched_and_unbatched_give_the_same_losses(host, prepared, n, two_sided):
    RGE = _pack(host, "zoodip.estimator").RandomGradientEstimator
    derive_seed = _pack(host, "zoodip.seeds").derive_seed
    est = RGE(n, 1e-3, two_sided)
    batched, unbatched = _loss_like(host, prepared.loss_fn, None), _loss_like(host, prepared.loss_fn, 1)
    rows = est.num_evaluations
    with _session(host, prepared):
        # a draw on the second template, so template choice is exercised too
        seed = next(s for s in (derive_seed(5, i) for i in range(100)) if batched.draw(s).template == 1)
        queries = est.queries(prepared.trainer.theta, derive_seed(5, 1))
        with _counting(prepared) as calls_b:
            lb = batched(queries, seed)
        with _counting(prepared) as calls_u:
            lu = unbatched(queries, seed)
    assert calls_b == {"text_encoder": [rows], "unet": [rows]}  # one call each, all queries
    assert calls_u == {"text_encoder": [1] * rows, "unet": [1] * rows}
    assert lb.shape == lu.shape == (rows,)
    assert torch.isfinite(lb).all()
    torch.testing.assert_close(lb, lu, rtol=RTOL, atol=ATOL)
    # the queries really differ (the losses are not all one number)
    assert len(set(lb.tolist())) > 1
    # and so do the gradient estimates built from them, to the same tolerance relative to their size
    gb = est.estimate(lb, prepared.trainer.theta, derive_seed(5, 1))
    gu = est.estimate(lu, prepared.trainer.theta, derive_seed(5, 1))
    assert torch.isfinite(gb).all()
    assert float((gb - gu).norm()) <= 1e-2 * float(gb.norm())


@pytest.mark.parametrize("max_batch", [None, 1], ids=["batched", "unbatched"])
def test_clean_loss_is_the_unperturbed_query_with_no_extra_pass(host, prepared, max_batch):
    """The step's reported loss is L(theta) on the step's own draw, read off query 0: a step
    makes exactly one text-encoder and one UNet call (batched), n+1 of each (unbatched)."""
    m = {k: _pack(host, f"zoodip.{k}") for k in ("estimator", "optim", "trainer")}
    loss_fn = _loss_like(host, prepared.loss_fn, max_batch)
    seen = []

    def recording(thetas, seed):
        seen.append((thetas.clone(), seed))
        return loss_fn(thetas, seed)

    theta = prepared.trainer.theta.clone()
    n = 2
    trainer = m["trainer"].ZOTrainer(theta, recording, m["estimator"].RandomGradientEstimator(n, 1e-3),
                                     m["optim"].paper_adam(theta, lr=5e-3), seed=3)
    with _session(host, prepared):
        before = theta.clone()
        with _counting(prepared) as calls:
            r = trainer.step()
        expected = [n + 1] if max_batch is None else [1] * (n + 1)
        assert calls == {"text_encoder": expected, "unet": expected}
        queries, seed = seen[-1]
        assert torch.equal(queries[0], before)  # query 0 is theta itself
        with _counting(prepared) as calls:
            alone = float(loss_fn(before.unsqueeze(0), seed)[0])  # L(theta) on the same draw, on its own
        assert calls == {"text_encoder": [1], "unet": [1]}
    if max_batch == 1:
        assert r.loss == alone  # the very same batch-1 calls: bit for bit
    else:
        assert r.loss == pytest.approx(alone, rel=RTOL, abs=ATOL)
    assert not torch.equal(theta, before)  # and the step did update the token
    assert len(seen) == 1  # one loss evaluation per step: no extra pass for the clean loss


def test_progress_text_shows_loss_and_it_per_second(host, tiny_ckpt, photos):
    steps = 3
    prompt = train_prompt(tiny_ckpt, photos, token="progress", steps=steps, queries=1, num_vectors=1)
    prompt["6"] = {"class_type": "PreviewAny", "inputs": {"source": ["5", 2]}}  # an output, so the prompt runs
    r = host.run_prompt(prompt)
    assert r.ok, r.errors
    texts = [e["text"] for e in r.events("progress_text") if e.get("node") == "5"]
    pattern = re.compile(r"step (\d+)/(\d+)\s+loss (\S+)\s+([0-9.]+) it/s")
    found = [m for m in (pattern.search(t) for t in texts) if m]
    assert found, f"no 'step k/S loss L R it/s' progress text in {texts}"
    # reported every step for short runs, ending at the last one
    assert [int(m.group(1)) for m in found] == list(range(1, steps + 1))
    assert all(int(m.group(2)) == steps for m in found)
    assert all(float(m.group(3)) == float(m.group(3)) for m in found)  # a number, not nan
    assert all(float(m.group(4)) > 0 for m in found)
    # the same run's loss output has the loss the text showed (to its 4 decimals)
    history = r.value("5", 2).loss
    assert float(found[-1].group(3)) == pytest.approx(history[-1], abs=1e-4)


@pytest.mark.parametrize(("query_batch", "expected"), [(2, [2, 2, 1]), (0, [5]), (None, [2, 2, 1])],
                         ids=["two", "all-at-once", "default"])
def test_query_batch_caps_the_unet_batch_at_a_samplers(host, loaded, photos, query_batch, expected):
    """Train Token's query_batch: n+1 = 5 queries go to the UNet in batches of at most 2 by default
    (a CFG sampler's batch, so training peaks at sampling's memory), or all at once with 0."""
    import nodes

    training, settings_mod = _pack(host, "nodes.training"), _pack(host, "zoodip.settings")
    model, clip, vae = loaded
    images = nodes.NODE_CLASS_MAPPINGS["ZOODiPLoadImages"]().load(photos, 64)[0]
    kw = {} if query_batch is None else {"query_batch": query_batch}
    settings = settings_mod.TrainSettings(token_name="qb", init_word="dog", steps=1, queries=4,
                                          prompt_templates="a photo of a {token}", **kw)
    with torch.inference_mode():
        run = training.prepare(model, clip, vae, images, settings)
    with _session(host, run), _counting(run) as calls:
        run.trainer.step()
    assert calls["unet"] == expected and calls["text_encoder"] == expected


def test_query_batch_below_zero_is_refused_before_any_work(host):
    settings_mod = _pack(host, "zoodip.settings")
    with pytest.raises(ValueError, match="query_batch must be 0"):
        settings_mod.TrainSettings(token_name="qb", query_batch=-1).validate()
