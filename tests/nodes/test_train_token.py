"""ZOODiP Train Token in the real host: end to end, weights untouched, determinism, progress."""

from __future__ import annotations

import hashlib

import torch

from .conftest import files_under
from .prompts import sample_nodes, train_prompt


def test_train_then_sample_with_the_new_token_and_save(host, tiny_ckpt, photos, clean_embeddings):
    prompt = train_prompt(tiny_ckpt, photos, token="my-dog", steps=6)
    prompt.update(sample_nodes(["5", 0], ["1", 0], ["1", 2], "a photo of embedding:my-dog"))
    prompt["30"] = {"class_type": "ZOODiPSaveEmbedding", "inputs": {"embedding": ["5", 1], "filename": "", "overwrite": False}}
    before = set(host.output_files())
    r = host.run_prompt(prompt)
    assert r.ok, r.errors
    # a sample was written, and the embedding is where the host's embedding: loader looks
    assert len(set(host.output_files()) - before) == 1
    assert (clean_embeddings / "my-dog.safetensors").is_file()
    # the progress bar moved to the end for the training node
    progress = [e for e in r.events("progress") if e.get("node") == "5"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 6
    # the loss history has one clean loss per step
    assert len(r.value("5", 2).loss) == 6

    trained = r.value("10", 0)
    # the *base* CLIP (a fresh load of the checkpoint), reading the saved file through the
    # host's own CLIPTextEncode, gives the same conditioning as the trained CLIP
    import nodes

    base_clip = nodes.CheckpointLoaderSimple().load_checkpoint(tiny_ckpt)[1]
    with torch.inference_mode():
        from_file = nodes.CLIPTextEncode().encode(base_clip, "a photo of embedding:my-dog")[0]
        init_word = nodes.CLIPTextEncode().encode(base_clip, "a photo of dog")[0]
    assert torch.equal(trained[0][0], from_file[0][0])
    # and the token is not a no-op: it differs from the init word's conditioning
    assert not torch.equal(trained[0][0], init_word[0][0])


def _digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _train(loaded, host, photos, **kw):
    import nodes

    model, clip, vae = loaded
    images = nodes.NODE_CLASS_MAPPINGS["ZOODiPLoadImages"]().load(photos, 64)[0]
    cfg = nodes.NODE_CLASS_MAPPINGS
    args = dict(token_name="tok", init_word="dog", num_vectors=2, steps=5, learning_rate=5e-3, queries=2,
                perturbation=1e-3, seed=0, puts=cfg["PUTSSamplerConfig"]().make(500, 900)[0],
                subspace=cfg["SubspaceProjector"]().make(4, 1e-3)[0], prompt_templates="a photo of a {token}")
    args.update(kw)
    with torch.inference_mode():  # as the executor runs nodes
        return cfg["ZOODiPTrainToken"]().train(model, clip, vae, images, **args)


def test_weights_bit_identical_and_no_autograd_graph(host, loaded, photos):
    model, clip, _ = loaded
    unet_before, te_before = _digest(model.model), _digest(clip.cond_stage_model)
    grad_seen = []
    hook = model.model.diffusion_model.register_forward_hook(
        lambda m, i, o: grad_seen.append(torch.is_grad_enabled() or o.requires_grad))
    try:
        with torch.enable_grad():  # even with grad on around it, training builds no graph
            emb = _train(loaded, host, photos)[1]
    finally:
        hook.remove()
    assert grad_seen and not any(grad_seen)
    assert _digest(model.model) == unet_before
    assert _digest(clip.cond_stage_model) == te_before
    assert emb.vectors["l"].grad_fn is None and not emb.vectors["l"].requires_grad
    assert model.model.current_patcher is None  # the sampler-state was cleaned up


def test_same_seed_same_embedding_bit_for_bit(host, loaded, photos):
    a = _train(loaded, host, photos, seed=7)[1].vectors["l"]
    b = _train(loaded, host, photos, seed=7)[1].vectors["l"]
    c = _train(loaded, host, photos, seed=8)[1].vectors["l"]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_input_clip_is_left_unchanged(host, loaded, photos):
    import nodes

    _, clip, _ = loaded
    trained_clip = _train(loaded, host, photos, token_name="only-in-copy")[0]
    enc = nodes.CLIPTextEncode()
    with torch.inference_mode():
        base = enc.encode(clip, "a photo of embedding:only-in-copy")[0][0][0]
        plain = enc.encode(clip, "a photo of")[0][0][0]
        new = enc.encode(trained_clip, "a photo of embedding:only-in-copy")[0][0][0]
    assert torch.equal(base, plain)  # the base CLIP does not know the token (no file was saved)
    assert not torch.equal(new, base)


def test_nothing_is_written_by_training_alone(host, loaded, photos, clean_embeddings):
    _train(loaded, host, photos)
    assert files_under(clean_embeddings) == set()
