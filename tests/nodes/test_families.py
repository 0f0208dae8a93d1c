"""SD1.x, SD2.x (eps and v-prediction) and SDXL in the host: train, save, reload, sample.

Models: the tiny SD1.5 checkpoint (conftest), a tiny SD2.x checkpoint (seeded random weights,
full OpenCLIP-H text encoder, loaded by CheckpointLoaderSimple, detected as SD20 eps), the same
turned into v-prediction by the core node ModelSamplingDiscrete (as users do), and a tiny SDXL
built through the host's own SDXL classes (a file needs the full SDXL depth to be detected).

For each family a 2-vector token is trained once (a few steps); then:
- the saved file (emb_params, or clip_l + clip_g for SDXL) read by the host's own ``embedding:``
  loader with the *base* CLIP gives the trained CLIP's conditioning bit for bit, and so does an
  A1111 ``.pt`` of the same vectors, which Load Embedding reads (weights_only) to resume from;
- sampling with ``embedding:<name>`` works (KSampler, 2 steps, 64 px).
Also: init words of several tokens, and the clear errors for unsupported models and for
embeddings of another family.
"""

from __future__ import annotations

import importlib
import types

import pytest
import torch

SD2_CKPT = "zoodip-tiny-sd2.safetensors"
FAMILIES = ("sd1", "sd2", "sd2v", "sdxl")
NAME = {"sd1": "SD1.x", "sd2": "SD2.x", "sd2v": "SD2.x", "sdxl": "SDXL"}
WIDTHS = {"sd1": {"l": 768}, "sd2": {"h": 1024}, "sd2v": {"h": 1024}, "sdxl": {"l": 768, "g": 1280}}
TEMPLATE = "a photo of a {token}"
PROMPT = "a photo of embedding:{name} on a table"


def _nodes():
    import nodes

    return nodes.NODE_CLASS_MAPPINGS


def _pack(host, module: str):
    return importlib.import_module(f"{host.pack_module.__name__}.{module}")


def _encode(clip, text: str):
    """CLIPTextEncode as the executor runs it: (cond, pooled)."""
    import nodes

    with torch.inference_mode():
        c = nodes.CLIPTextEncode().encode(clip, text)[0][0]
    return c[0], c[1].get("pooled_output")


def _same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and (a[1] is None) == (b[1] is None) and (a[1] is None or torch.equal(a[1], b[1]))


# --- the models -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd2(host):
    """(model, clip, vae) of the tiny SD2.x checkpoint, loaded once by the host's loader."""
    import nodes
    from devtools.assets import cached_sd2_checkpoint

    path = host.model_dir("checkpoints") / SD2_CKPT
    if not path.exists():
        path.symlink_to(cached_sd2_checkpoint(seed=0))  # built once per machine (git-ignored cache)
    return nodes.CheckpointLoaderSimple().load_checkpoint(SD2_CKPT)[:3]


@pytest.fixture(scope="module")
def sd2v(sd2):
    """The same checkpoint made v-prediction with the core node, as users do."""
    model, clip, vae = sd2
    return _nodes()["ModelSamplingDiscrete"]().patch(model, "v_prediction", False)[0], clip, vae


@pytest.fixture(scope="module")
def sdxl(host):
    from devtools.assets import build_tiny_sdxl

    return build_tiny_sdxl(seed=0)


def _models(request, family: str):
    return request.getfixturevalue({"sd1": "loaded", "sd2": "sd2", "sd2v": "sd2v", "sdxl": "sdxl"}[family])


def _train(host, models, photos, family: str, **kw):
    """Train Token on (model, clip, vae), called as the executor calls it, with the paper's
    per-family mu and PUTS upper end; few steps and queries (the SD2 text encoder is large)."""
    model, clip, vae = models
    N = _nodes()
    fam = _pack(host, "nodes.host").detect_family(model, clip)
    images = N["ZOODiPLoadImages"]().load(photos, 64)[0]
    args = dict(token_name=f"tok-{family}", init_word="dog", num_vectors=2, steps=2, learning_rate=5e-3,
                queries=1 if family.startswith("sd2") else 2, perturbation=fam.paper_mu, seed=0,
                puts=N["PUTSSamplerConfig"]().make(500, fam.paper_t_max)[0],
                subspace=N["SubspaceProjector"]().make(4, 1e-3)[0], prompt_templates=TEMPLATE)
    args.update(kw)
    with torch.inference_mode():
        return N["ZOODiPTrainToken"]().train(model, clip, vae, images, **args)[:3]  # clip, embedding, loss


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request, host, photos):
    """One training run per family: the models, the trained CLIP, the embedding, and the trained
    CLIP's conditioning of PROMPT (encoded once: the SD2 text encoder is the slow part)."""
    family = request.param
    models = _models(request, family)
    base = models[0].model  # shared by the eps model and its v-prediction clone
    seen = []  # the sampling object the UNet's own model runs with at each training call
    hook = base.diffusion_model.register_forward_pre_hook(lambda m, a: seen.append(type(base.model_sampling)))
    try:
        trained_clip, emb, history = _train(host, models, photos, family)
    finally:
        hook.remove()
    assert len(history.loss) == 2
    cond = _encode(trained_clip, PROMPT.format(name=emb.name))
    return types.SimpleNamespace(family=family, models=models, clip=trained_clip, emb=emb, cond=cond, seen=seen)


# --- detection --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_family_and_prediction_type_are_detected(host, request, family):
    import comfy.model_sampling

    model, clip, _ = _models(request, family)
    fam = _pack(host, "nodes.host").detect_family(model, clip)
    assert fam.name == NAME[family]
    assert dict(zip(fam.encoders, fam.dims)) == WIDTHS[family]
    assert (fam.paper_mu, fam.paper_t_max) == {"SD1.x": (1e-3, 900), "SD2.x": (1e-2, 900), "SDXL": (1e-2, 700)}[fam.name]
    sampling = model.get_model_object("model_sampling")
    v = isinstance(sampling, comfy.model_sampling.V_PREDICTION)
    assert v == (family == "sd2v")
    assert isinstance(sampling, comfy.model_sampling.EPS)  # V_PREDICTION subclasses EPS


def test_training_runs_with_the_models_prediction_type(trained):
    """The UNet calls of training ran with the MODEL's own sampling object: v-prediction for the
    ModelSamplingDiscrete clone, eps for the checkpoint it was made from (which shares its weights)."""
    import comfy.model_sampling

    assert trained.seen
    assert {issubclass(t, comfy.model_sampling.V_PREDICTION) for t in trained.seen} == {trained.family == "sd2v"}


# --- train, save, reload ----------------------------------------------------------------------


def test_every_text_encoder_part_of_the_token_is_trained(host, trained):
    """A 2-vector token per encoder (SDXL: CLIP-L and CLIP-G), every part moved by training."""
    model, clip, _ = trained.models
    fam = _pack(host, "nodes.host").detect_family(model, clip)
    init = _pack(host, "nodes.host").init_vectors(clip, fam, "dog", 2)
    emb = trained.emb
    assert {k: v.shape for k, v in emb.vectors.items()} == {k: (2, w) for k, w in WIDTHS[trained.family].items()}
    for key, v in emb.vectors.items():
        assert torch.isfinite(v).all()
        for j in range(2):  # each vector of each encoder moved away from the init word
            assert not torch.equal(v[j], init[key][j]), (key, j)
    assert emb.metadata["zoodip.family"] == NAME[trained.family]


def test_saved_file_gives_the_trained_conditioning(host, trained, clean_embeddings):
    from safetensors import safe_open

    _, base_clip, _ = trained.models
    name = trained.emb.name
    _nodes()["ZOODiPSaveEmbedding"]().save(trained.emb, "", False)
    with safe_open(str(clean_embeddings / f"{name}.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 -- safe_open has no __iter__
    if trained.family == "sdxl":
        assert set(tensors) == {"clip_l", "clip_g"}
        assert torch.equal(tensors["clip_l"], trained.emb.vectors["l"])
        assert torch.equal(tensors["clip_g"], trained.emb.vectors["g"])
    else:
        assert set(tensors) == {"emb_params"}
        assert torch.equal(tensors["emb_params"], next(iter(trained.emb.vectors.values())))
    # the base CLIP, through the host's own embedding: loader, gives the trained CLIP's conditioning
    assert _same(_encode(base_clip, PROMPT.format(name=name)), trained.cond)
    # Load Embedding gives the same vectors back, for the same encoders
    back = _nodes()["ZOODiPLoadEmbedding"]().load(f"{name}.safetensors")[0]
    assert set(back.vectors) == set(trained.emb.vectors)
    assert all(torch.equal(back.vectors[k], v) for k, v in trained.emb.vectors.items())


def test_a1111_pt_is_read_by_the_host_and_resumes(host, trained, photos, clean_embeddings):
    """The A1111 format (string_to_param; SDXL: clip_l/clip_g) of the same vectors: the host's
    loader gives the trained conditioning; Load Embedding reads it safely (weights_only) and a
    run resumes from it (no training state in such a file: it starts again from its vectors)."""
    model, base_clip, vae = trained.models
    vecs = trained.emb.vectors
    if trained.family == "sdxl":
        obj = {"clip_l": vecs["l"].clone(), "clip_g": vecs["g"].clone()}
    else:
        obj = {"string_to_param": {"*": next(iter(vecs.values())).clone()}, "name": "old", "step": 2}
    torch.save(obj, clean_embeddings / "old.pt")
    assert _same(_encode(base_clip, PROMPT.format(name="old")), trained.cond)
    emb = _nodes()["ZOODiPLoadEmbedding"]().load("old.pt")[0]
    H, training = _pack(host, "nodes.host"), _pack(host, "nodes.training")
    fam = H.detect_family(model, base_clip)
    read = emb.for_encoders(list(fam.encoders))
    assert set(read) == set(vecs) and all(torch.equal(read[k], v) for k, v in vecs.items())
    if trained.family.startswith("sd2"):
        # the run starts exactly at the file's vectors (one step more would cost minutes of
        # the large SD2 text encoder on a CPU; sd1 and sdxl below run it)
        settings = _pack(host, "zoodip.settings").TrainSettings(token_name="old", init_word="dog", num_vectors=2, steps=1,
                                                              prompt_templates=TEMPLATE)
        images = _nodes()["ZOODiPLoadImages"]().load(photos, 64)[0]
        with torch.inference_mode():
            run = training.prepare(model, base_clip, vae, images, settings, resume=emb)
        assert torch.equal(run.trainer.theta.cpu(), torch.cat([vecs[k] for k in fam.encoders], dim=-1))
        return
    _, resumed, history = _train(host, trained.models, photos, trained.family, resume=emb, steps=1, queries=1,
                                 token_name="old")
    assert len(history.loss) == 1
    assert set(resumed.vectors) == set(vecs)
    assert all(not torch.equal(resumed.vectors[k], vecs[k]) for k in vecs)


def test_sampling_with_the_token(host, trained):
    """KSampler, 2 steps at 64 px, on the prompt with embedding:<name> (the trained CLIP's
    conditioning; the negative is it zeroed out, as the core node does)."""
    import nodes

    model, _, vae = trained.models
    pos = [[trained.cond[0], {"pooled_output": trained.cond[1]}]]
    neg = _nodes()["ConditioningZeroOut"]().zero_out(pos)[0]
    latent = nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    with torch.inference_mode():
        out = nodes.KSampler().sample(model, 1, 2, 5.0, "euler", "normal", pos, neg, latent, denoise=1.0)[0]
        image = nodes.VAEDecode().decode(vae, out)[0]
    assert out["samples"].shape == (1, 4, 8, 8) and torch.isfinite(out["samples"]).all()
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()


# --- init words of several tokens ---------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_init_word_of_several_tokens_fills_several_vectors(host, request, family):
    """Like kohya: 'a red ball' (3 tokens) starts 3 vectors at those tokens; num_vectors above
    that repeats them cyclically; below, the first ones are taken."""
    H = _pack(host, "nodes.host")
    model, clip, _ = _models(request, family)
    fam = H.detect_family(model, clip)
    for key in fam.encoders:
        table = H._encoder(clip, key).transformer.get_input_embeddings().weight.float().cpu()
        ids = [t for t, _ in clip.tokenize("a red ball")[key][0][1:4]]
        rows = table[ids]
        assert torch.equal(H.word_vectors(clip, key, "a red ball"), rows)
        assert torch.equal(H.init_vectors(clip, fam, "a red ball", 5)[key], rows[[0, 1, 2, 0, 1]])
        assert torch.equal(H.init_vectors(clip, fam, "a red ball", 2)[key], rows[:2])
        # "!" is token 0, also CLIP-G's pad token: it still counts (same vectors for both encoders)
        assert H.word_vectors(clip, key, "dog!").shape[0] == 2
    # the 3 init vectors as a token read exactly as the words themselves
    token = H.apply_embedding(clip, _pack(host, "zoodip.embedding").Embedding(
        "x", H.init_vectors(clip, fam, "a red ball", 3)), "x")
    assert _same(_encode(token, "a photo of embedding:x"), _encode(clip, "a photo of a red ball"))


# --- what is refused ------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["SD3", "Flux", "SVD_img2vid"])
def test_unsupported_models_are_refused_before_training(host, loaded, photos, config):
    """A model of another family (its model_config says so) gets a message naming what is supported,
    before any forward pass."""
    import comfy.supported_models

    model, clip, vae = loaded
    # a MODEL (a real patcher, as the node checks what is linked) whose loaded model says it is
    # another family (only its config is read before refusing)
    fake = model.clone()
    fake.model = types.SimpleNamespace(model_config=getattr(comfy.supported_models, config)({}))
    images = _nodes()["ZOODiPLoadImages"]().load(photos, 64)[0]
    with pytest.raises(ValueError) as e:
        _nodes()["ZOODiPTrainToken"]().train(fake, clip, vae, images, token_name="t", init_word="dog", num_vectors=1,
                                             steps=1, learning_rate=5e-3, queries=1, perturbation=1e-3, seed=0)
    msg = str(e.value)
    assert f"cannot train on this model ({config})" in msg
    assert all(f in msg for f in ("SD1.x", "SD2.x", "SDXL"))


@pytest.mark.parametrize("model_of, clip_of", [("sd1", "sdxl"), ("sdxl", "sd1"), ("sd2", "sd1"), ("sd1", "sd2")])
def test_a_clip_of_another_family_is_refused(host, request, model_of, clip_of):
    model = _models(request, model_of)[0]
    clip = _models(request, clip_of)[1]
    with pytest.raises(ValueError, match=f"the CLIP does not match the {NAME[model_of]} model"):
        _pack(host, "nodes.host").detect_family(model, clip)


def _saved(host, family: str, name: str):
    """A file saved by Save Embedding for ``family`` (2 random vectors), read back by Load Embedding."""
    E = _pack(host, "zoodip.embedding")
    g = torch.Generator().manual_seed(1)
    vecs = {k: torch.randn(2, w, generator=g) for k, w in WIDTHS[family].items()}
    N = _nodes()
    N["ZOODiPSaveEmbedding"]().save(E.Embedding(name, vecs, {"zoodip.family": NAME[family]}), "", True)
    return N["ZOODiPLoadEmbedding"]().load(f"{name}.safetensors")[0]


@pytest.mark.parametrize("emb_of, clip_of, words", [
    ("sd1", "sdxl", "SD1.x"),
    ("sdxl", "sd1", "two text encoders (SDXL)"),
    ("sd2", "sd1", "SD2.x"),
    ("sd1", "sd2", "SD1.x"),
    ("sd2", "sdxl", "SD2.x"),
])
def test_an_embedding_of_another_family_is_refused(host, request, clean_embeddings, emb_of, clip_of, words):
    emb = _saved(host, emb_of, f"from-{emb_of}")
    clip = _models(request, clip_of)[1]
    with pytest.raises(ValueError) as e:
        _nodes()["ZOODiPApplyEmbedding"]().apply(clip, emb, "x")
    assert words in str(e.value) and "use an embedding trained for this model family" in str(e.value)


def test_an_sd2_file_from_another_tool_is_refused_by_width(host, loaded, clean_embeddings):
    """No metadata (kohya, A1111): the width tells the families apart."""
    from safetensors.torch import save_file

    save_file({"emb_params": torch.zeros(2, 1024)}, str(clean_embeddings / "foreign.safetensors"))
    emb = _nodes()["ZOODiPLoadEmbedding"]().load("foreign.safetensors")[0]
    with pytest.raises(ValueError, match="width 1024 but this text encoder needs 768"):
        _nodes()["ZOODiPApplyEmbedding"]().apply(loaded[1], emb, "x")


@pytest.mark.parametrize("emb_of, train_on", [("sd2", "sd1"), ("sdxl", "sd2"), ("sd1", "sdxl")])
def test_resume_from_another_family_is_refused(host, request, photos, clean_embeddings, emb_of, train_on):
    emb = _saved(host, emb_of, f"resume-{emb_of}")
    model, clip, vae = _models(request, train_on)
    calls = []
    hook = model.model.diffusion_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=f"was trained on {NAME[emb_of]}, but this model is {NAME[train_on]}"):
            _train(host, (model, clip, vae), photos, train_on, resume=emb)
    finally:
        hook.remove()
    assert not calls


# --- the shipped SDXL workflow --------------------------------------------------------------------


def test_shipped_sdxl_workflow_has_the_papers_settings_and_validates(host):
    """workflows/train_token_sdxl: perturbation 1e-2, PUTS 500-700, 1024 px; the host accepts it
    as queued (a real SDXL file is needed to run it: tiny SDXL models cannot be files)."""
    from pathlib import Path

    from devtools.host import load_api_workflow

    api = load_api_workflow(Path(__file__).resolve().parents[2] / "workflows" / "api" / "train_token_sdxl.api.json")
    by_type = {}
    for node in api.values():
        by_type.setdefault(node["class_type"], []).append(node["inputs"])
    train = by_type["ZOODiPTrainToken"][0]
    assert train["perturbation"] == 1e-2 and train["queries"] == 2 and train["learning_rate"] == 5e-3
    assert by_type["PUTSSamplerConfig"][0] == {"t_min": 500, "t_max": 700}
    assert by_type["ZOODiPLoadImages"][0]["resolution"] == 1024
    latent = by_type["EmptyLatentImage"][0]
    assert (latent["width"], latent["height"]) == (1024, 1024)
    assert any(f"embedding:{train['token_name']}" in e["text"] for e in by_type["CLIPTextEncode"])

    ckpt = host.model_dir("checkpoints") / by_type["CheckpointLoaderSimple"][0]["ckpt_name"]
    photos = host.input_dir / by_type["ZOODiPLoadImages"][0]["folder"]
    made = [p for p in (ckpt, photos) if not p.exists()]
    try:
        ckpt.touch()  # only its name is checked when a prompt is queued
        photos.mkdir(exist_ok=True)
        assert host.validate(api) == []
    finally:
        for p in made:
            p.rmdir() if p.is_dir() else p.unlink()
