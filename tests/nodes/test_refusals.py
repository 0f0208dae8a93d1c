"""Hostile and careless input in the real host: refused with a sentence that names the user's value
and says what to do, before any expensive work, with nothing written; or handled correctly.
(docs/refusals.md lists every case.)"""

from __future__ import annotations

import errno
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from .conftest import files_under
from .prompts import train_prompt


def _nodes():
    import nodes

    return nodes.NODE_CLASS_MAPPINGS


def _args(**kw):
    a = dict(token_name="tok", init_word="dog", num_vectors=1, steps=1, learning_rate=5e-3, queries=1,
             perturbation=1e-3, seed=0, prompt_templates="a photo of a {token}")
    a.update(kw)
    return a


class _Forwards:
    """Counts UNet forward passes (so a test can say: refused before any)."""

    def __init__(self, model):
        self.calls = 0
        self.hook = model.model.diffusion_model.register_forward_hook(self._count)

    def _count(self, *a):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.hook.remove()


def _train(loaded, images=None, **kw):
    model, clip, vae = loaded
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0)) if images is None else images
    with torch.inference_mode():
        return _nodes()["ZOODiPTrainToken"]().train(model, clip, vae, images, **_args(**kw))


def _st(path, **tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _state(host, theta: torch.Tensor, step: int = 1) -> dict:
    z = host.pack_module.zoodip
    t = theta.clone()
    return {**z.ZOTrainer(t, lambda *a: None, z.RandomGradientEstimator(), z.paper_adam(t)).state_dict(), "step": step}


# --- Save: an existing file is refused before training; both files or neither ----------------------


@pytest.mark.parametrize("filename,existing", [("out", "out.safetensors"), ("", "taken.safetensors")],
                         ids=["filename", "token_name"])
def test_existing_save_target_is_refused_before_training(host, tiny_ckpt, photos, clean_embeddings, filename, existing):
    (clean_embeddings / existing).write_bytes(b"the user's own file")
    prompt = train_prompt(tiny_ckpt, photos, token="taken", steps=2)
    prompt["9"] = {"class_type": "ZOODiPSaveEmbedding", "inputs": {"embedding": ["5", 1], "filename": filename, "overwrite": False}}
    r = host.run_prompt(prompt)
    assert not r.ok
    (err,) = r.errors
    assert err["node_id"] == "5" and err["exception_type"].endswith("FileExistsError")
    assert f"{clean_embeddings / existing} already exists, so Save Embedding (node 9) would refuse it" in err["message"]
    assert "choose another filename there, or turn its overwrite on" in err["message"]
    assert not [e for e in r.events("progress") if e.get("node") == "5"]  # no training step ran
    assert files_under(clean_embeddings) == {existing}
    assert (clean_embeddings / existing).read_bytes() == b"the user's own file"


def test_save_on_a_full_disk_writes_neither_file_and_a_retry_works(host, clean_embeddings, monkeypatch):
    files = host.pack_module.zoodip.files
    emb = host.pack_module.zoodip.embedding.Embedding("full", {"l": torch.ones(1, 768)}, state=_state(host, torch.ones(1, 768)))
    real, calls = files._write_temp, []

    def writer(path, data):  # the embedding's temp file fits, the state's does not
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path.parent / f".{path.name}.k3j2.tmp"))
        return real(path, data)

    monkeypatch.setattr(files, "_write_temp", writer)
    save = _nodes()["ZOODiPSaveEmbedding"]()
    with pytest.raises(OSError) as e:
        save.save(emb, "", False)
    assert calls == ["full.safetensors", "full.zoodip-state"]
    msg = str(e.value)
    assert msg.startswith(f"could not write {clean_embeddings / 'full.zoodip-state'}: the disk holding {clean_embeddings} is full")
    assert "free some space, then try again" in msg and "k3j2" not in msg
    assert files_under(clean_embeddings) == set()
    monkeypatch.setattr(files, "_write_temp", real)
    save.save(emb, "", False)  # not refused as "already exists"
    assert files_under(clean_embeddings) == {"full.safetensors", "full.zoodip-state"}
    assert _nodes()["ZOODiPLoadEmbedding"]().load("full.safetensors")[0].state["step"] == 1


def test_snapshot_on_a_full_disk_leaves_no_half_pair(host, clean_embeddings, monkeypatch):
    files = host.pack_module.zoodip.files
    common = host.pack_module.nodes.common
    emb = host.pack_module.zoodip.embedding.Embedding("snapfull", {"l": torch.ones(1, 768)}, state=_state(host, torch.ones(1, 768)))
    real, calls = files._write_temp, []

    def writer(path, data):
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(files, "_write_temp", writer)
    with pytest.raises(OSError, match="snapfull/step-3.zoodip-state: the disk holding .* is full"):
        common.save_snapshot(emb, 3)
    assert files_under(clean_embeddings) == set()


def test_a_non_finite_embedding_is_never_saved_or_applied(host, loaded, clean_embeddings):
    Embedding = host.pack_module.zoodip.embedding.Embedding
    _, clip, _ = loaded
    bad = Embedding("nan-tok", {"l": torch.full((1, 768), math.nan)})
    with pytest.raises(ValueError, match="embedding 'nan-tok' holds NaN or infinite values"):
        _nodes()["ZOODiPSaveEmbedding"]().save(bad, "", False)
    with pytest.raises(ValueError, match="would turn every image that uses it black"):
        _nodes()["ZOODiPApplyEmbedding"]().apply(clip, bad, "")
    assert files_under(clean_embeddings) == set()


# --- Load Embedding: files that hold no usable token -------------------------------------------------


def _bad_files(folder):
    _st(folder / "nan.safetensors", emb_params=torch.full((1, 768), math.nan))
    _st(folder / "huge.safetensors", emb_params=torch.full((1, 768), 2e9))
    _st(folder / "cube.safetensors", emb_params=torch.zeros(1, 4, 768))
    _st(folder / "empty.safetensors", emb_params=torch.zeros(0, 768))
    data = _st(folder / "cut.safetensors", emb_params=torch.zeros(8, 768)).read_bytes()
    (folder / "cut.safetensors").write_bytes(data[: len(data) // 3])
    torch.save({"string_to_param": {"*": torch.full((1, 768), math.inf)}}, folder / "inf.pt")


@pytest.mark.parametrize("name,words", [
    ("nan.safetensors", "nan.safetensors holds NaN or infinite values: it is damaged"),
    ("huge.safetensors", "huge.safetensors holds values up to 2e+09, far beyond any real token"),
    ("cube.safetensors", "cube.safetensors holds a tensor of shape (1, 4, 768); an embedding is (vectors, width)"),
    ("empty.safetensors", "empty.safetensors holds no vectors (shape (0, 768))"),
    ("cut.safetensors", "cut.safetensors is not a readable safetensors file"),
    ("inf.pt", "inf.pt holds NaN or infinite values"),
])
def test_unusable_embedding_files_are_refused_by_load(host, clean_embeddings, name, words):
    _bad_files(clean_embeddings)
    before = files_under(clean_embeddings)
    r = host.run_prompt({
        "1": {"class_type": "ZOODiPLoadEmbedding", "inputs": {"embedding_name": name}},
        "2": {"class_type": "ZOODiPSaveEmbedding", "inputs": {"embedding": ["1", 0], "filename": "copy", "overwrite": False}},
    })
    assert not r.ok
    (err,) = r.errors
    assert err["node_id"] == "1" and words in err["message"], err["message"]
    assert "set num_vectors to 0" not in err["message"]
    assert files_under(clean_embeddings) == before


def test_resume_from_a_non_finite_or_stateless_token_is_refused_before_any_forward(host, loaded, clean_embeddings):
    Embedding = host.pack_module.zoodip.embedding.Embedding
    model = loaded[0]
    one = torch.zeros(1, 768)
    nan = Embedding("nan-res", {"l": torch.full((1, 768), math.nan)}, state={**_state(host, one), "family": "SD1.x"})
    no_opt = {k: v for k, v in _state(host, one).items() if k != "optimizer"}
    cases = [
        (nan, "resume 'nan-res' holds NaN or infinite values"),
        (Embedding("huge-res", {"l": torch.full((1, 768), 1e6)}), "resume 'huge-res' holds values up to 1e+06"),
        (Embedding("no-opt", {"l": one}, state={**no_opt, "family": "SD1.x"}),
         "the training state of resume 'no-opt' cannot be used: it lacks optimizer. Load the embedding again"),
    ]
    with _Forwards(model) as f:
        for resume, words in cases:
            with pytest.raises(ValueError) as e:
                _train(loaded, resume=resume)
            assert words in str(e.value), str(e.value)
    assert f.calls == 0
    assert files_under(clean_embeddings) == set()


def test_a_state_file_without_an_optimizer_costs_only_the_exact_resume(host, clean_embeddings, caplog):
    emb_io = host.pack_module.zoodip.embedding
    Embedding = emb_io.Embedding
    v = torch.full((1, 768), 0.5)
    emb_io.save(Embedding("half", {"l": v}), clean_embeddings / "half.safetensors")
    state = {k: x for k, x in _state(host, v).items() if k != "optimizer"}
    (clean_embeddings / "half.zoodip-state").write_bytes(emb_io.state_to_bytes(state))
    with caplog.at_level(logging.WARNING, logger="zoodip"):
        emb = _nodes()["ZOODiPLoadEmbedding"]().load("half.safetensors")[0]
    assert emb.state is None and torch.equal(emb.vectors["l"], v)
    assert "the training state half.zoodip-state cannot be used (it lacks optimizer)" in caplog.text
    assert "KeyError" not in caplog.text


def test_oldest_pt_format_reads_as_the_host_reads_it(host, loaded, clean_embeddings):
    """A file of the original textual-inversion code: string_to_param is a torch.nn.ParameterDict."""
    import nodes

    _, clip, _ = loaded
    v = torch.randn(2, 768, generator=torch.Generator().manual_seed(4)) * 0.05
    torch.save({"string_to_token": {"*": 265}, "string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(v)}),
                "name": "oldest", "step": 5000}, clean_embeddings / "oldest.pt")
    emb = _nodes()["ZOODiPLoadEmbedding"]().load("oldest.pt")[0]
    assert torch.equal(emb.vectors["*"], v)
    applied = _nodes()["ZOODiPApplyEmbedding"]().apply(clip, emb, "mine")[0]
    enc = nodes.CLIPTextEncode()
    with torch.inference_mode():
        ours = enc.encode(applied, "a photo of embedding:mine")[0][0][0]
        hosts = enc.encode(clip, "a photo of embedding:oldest")[0][0][0]  # the host's own loader
        plain = enc.encode(clip, "a photo of")[0][0][0]
    assert torch.equal(ours, hosts) and not torch.equal(ours, plain)


# --- Train Token: raw messages that became sentences ------------------------------------------------


def test_num_vectors_that_do_not_fit_beside_the_template_name_the_real_limit(host, loaded, clean_embeddings):
    model = loaded[0]
    with _Forwards(model) as f:
        with pytest.raises(ValueError) as e:
            _train(loaded, num_vectors=75, prompt_templates="a photo of a {token}")
        assert str(e.value) == (
            "num_vectors 75 plus the 4 tokens of prompt template 'a photo of a {token}' need 79 of CLIP's 75 token "
            "slots: with this template num_vectors can be at most 71 (or shorten the template)"
        )
        with pytest.raises(ValueError, match="its words alone take 80 of CLIP's 75 token slots; shorten it"):
            _train(loaded, prompt_templates="{token} " + "dog " * 80)
    assert f.calls == 0


@pytest.mark.parametrize("images,words", [
    (torch.rand(2, 64, 64), "images: shape (2, 64, 64) is a MASK, not an IMAGE"),
    (torch.rand(1, 1, 1, 3), "images: 1x1 pixels is too small; they must be at least 64x64"),
    (torch.rand(1, 64, 64, 2), "images: 2 channels per pixel"),
    (torch.full((1, 64, 64, 3), 255.0), "did not scale them"),
    (torch.full((1, 64, 64, 3), math.nan), "NaN or infinite pixel values"),
], ids=["mask", "1x1", "two-channel", "0..255", "nan"])
def test_bad_image_inputs_are_refused_before_any_forward(host, loaded, clean_embeddings, images, words):
    with _Forwards(loaded[0]) as f, pytest.raises(ValueError) as e:
        _train(loaded, images=images)
    assert words in str(e.value)
    assert f.calls == 0


def test_one_channel_images_train_as_grey_rgb(host, loaded, clean_embeddings):
    grey = torch.rand(2, 64, 64, 1, generator=torch.Generator().manual_seed(1))
    a = _train(loaded, images=grey)[1]
    b = _train(loaded, images=grey.expand(-1, -1, -1, 3).clone())[1]
    assert torch.equal(a.vectors["l"], b.vectors["l"])


def test_cancel_before_the_first_step_writes_nothing(host, tiny_ckpt, photos, clean_embeddings):
    prompt = train_prompt(tiny_ckpt, photos, token="cancel0", steps=3, save_every=1)
    prompt["9"] = {"class_type": "PreviewAny", "inputs": {"source": ["5", 2]}}

    def on_message(m):  # Cancel as the node starts: before its first step
        if m.event == "executing" and m.data.get("node") == "5":
            host.interrupt()

    r = host.run_prompt(prompt, on_message=on_message)
    assert r.interrupted and not r.ok
    assert not [e for e in r.events("progress") if e.get("node") == "5" and e["value"] > 0]
    assert files_under(clean_embeddings) == set()


def test_runs_folder_of_a_token_linked_outside_is_refused(host, clean_embeddings, tmp_path):
    common = host.pack_module.nodes.common
    Embedding = host.pack_module.zoodip.embedding.Embedding
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (clean_embeddings / "zoodip-runs").mkdir()
    (clean_embeddings / "zoodip-runs" / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="not inside the embeddings folder"):
        common.save_snapshot(Embedding("linked", {"l": torch.ones(1, 768)}), 1)
    assert not list(outside.iterdir())


def test_save_onto_a_link_that_leads_outside_is_refused(host, clean_embeddings, tmp_path):
    target = tmp_path / "victim.safetensors"
    target.write_bytes(b"someone else's file")
    (clean_embeddings / "victim.safetensors").symlink_to(target)
    save = _nodes()["ZOODiPSaveEmbedding"]
    assert "would write outside the embeddings folder" in save.validate_inputs("victim")
    Embedding = host.pack_module.zoodip.embedding.Embedding
    with pytest.raises(ValueError, match="would write outside the embeddings folder"):
        save().save(Embedding("victim", {"l": torch.ones(1, 768)}), "", True)
    assert target.read_bytes() == b"someone else's file"


# --- Evaluate Token: weights that do not fit are refused ------------------------------------------


def test_dino_weights_of_another_architecture_are_refused(host):
    import timm

    folder = host.models_dir / "dino"
    folder.mkdir(exist_ok=True)
    small = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    # the right shapes under keys that match nothing, and a file for another architecture
    save_file({f"backbone.{k}": v.contiguous() for k, v in small.state_dict().items()}, str(folder / "renamed.safetensors"))
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(folder / "tiny.safetensors"))
    ev_mod = host.pack_module.zoodip.evaluate
    with pytest.raises(ValueError) as e:
        ev_mod.load_dino(folder / "renamed.safetensors", "vit_tiny_patch16_224")
    msg = str(e.value)
    assert msg.startswith("renamed.safetensors does not fit the timm architecture 'vit_tiny_patch16_224':")
    assert "weights are not in the file" in msg and "belong to none (e.g. backbone." in msg
    with pytest.raises(ValueError, match="tiny.safetensors does not fit the timm architecture 'vit_small_patch16_224'"):
        ev_mod.load_dino(folder / "tiny.safetensors", "vit_small_patch16_224")
    with pytest.raises(ValueError, match="unknown timm architecture 'no_such_vit'"):
        ev_mod.load_dino(folder / "tiny.safetensors", "no_such_vit")


def test_open_clip_weights_of_another_architecture_are_refused(host):
    import json

    import open_clip

    folder = host.models_dir / "open_clip"
    folder.mkdir(exist_ok=True)
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    (folder / "one-layer.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / "one-layer.json")
    model = open_clip.create_model("one-layer", pretrained=None)
    torch.save(model.state_dict(), folder / "one-layer.pt")
    (folder / "one-layer.json").unlink()  # the config is gone: ViT-B-32 is assumed, which does not fit
    ev_mod = host.pack_module.zoodip.evaluate
    with pytest.raises(ValueError) as e:
        ev_mod.load_open_clip(folder / "one-layer.pt", "ViT-B-32")
    assert str(e.value).startswith("one-layer.pt does not fit the open_clip architecture 'ViT-B-32' (")
    assert "set clip_architecture to the file's architecture" in str(e.value)


def test_evaluate_takes_grey_images(host):
    ev_mod = host.pack_module.zoodip.evaluate
    grey = torch.rand(2, 16, 16, 1)
    assert np.array_equal(np.asarray(ev_mod.to_pil(grey)[0]), np.asarray(ev_mod.to_pil(grey.expand(-1, -1, -1, 3))[0]))
    with pytest.raises(ValueError, match="references: shape"):
        ev_mod.to_pil(torch.rand(2, 16, 16), "references")


# --- Load Training Images -------------------------------------------------------------------------


def test_sixteen_bit_grey_photo_reads_at_half_brightness(host):
    folder = host.input_dir / "grey16"
    folder.mkdir(exist_ok=True)
    Image.fromarray(np.full((80, 80), 32768, np.uint16)).save(folder / "mid.png")
    rgba = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    rgba.paste((200, 0, 0, 255), (20, 20, 60, 60))
    rgba.save(folder / "cutout.png")
    images = _nodes()["ZOODiPLoadImages"]().load("grey16", 64)[0]
    cutout, mid = images  # sorted by name
    assert torch.allclose(mid, torch.full_like(mid, 32768 / 65535), atol=1e-4)
    assert torch.allclose(cutout[0, 0], torch.ones(3))  # transparent: the white background, not black
    assert torch.allclose(cutout[32, 32], torch.tensor([200 / 255, 0, 0]), atol=1e-6)


# --- a broken client ------------------------------------------------------------------------------


@pytest.mark.parametrize("node,inp,value,words", [
    ("5", "model", "sd15.safetensors", "model: got str 'sd15.safetensors', not a MODEL: connect the output of your checkpoint loader"),
    ("5", "clip", 7, "clip: got int 7, not a CLIP"),
    ("5", "vae", {"x": 1}, "vae: got dict {'x': 1}, not a VAE"),
    ("5", "images", "photos/", "images: got a str, not an IMAGE"),
    ("5", "puts", "500-900", "puts: got str '500-900', not a ZOODIP_PUTS: connect the output of PUTS Sampler Config"),
    ("5", "subspace", 128, "subspace: got int 128, not a ZOODIP_SUBSPACE"),
    ("5", "resume", "my-dog.safetensors", "resume: got str 'my-dog.safetensors', not an EMBEDDING"),
    ("9", "embedding", "tok", "embedding: got str 'tok', not an EMBEDDING"),
])
def test_a_literal_where_a_link_belongs_is_refused_with_what_to_connect(host, tiny_ckpt, photos, clean_embeddings,
                                                                        node, inp, value, words):
    # the host lets an API client write any value in place of a link to a custom type
    prompt = train_prompt(tiny_ckpt, photos, steps=1)
    prompt["9"] = {"class_type": "ZOODiPSaveEmbedding", "inputs": {"embedding": ["5", 1], "filename": "lit", "overwrite": False}}
    prompt[node]["inputs"][inp] = value
    r = host.run_prompt(prompt)
    assert not r.ok
    msgs = [e["message"] for e in r.errors if e.get("type") == "execution_error" and e["node_id"] == node]
    assert msgs and words in msgs[0], r.errors
    if node == "5":
        assert not [e for e in r.events("progress") if e.get("node") == "5"]  # refused before training
    assert files_under(clean_embeddings) == set()


def test_quantize_and_evaluate_refuse_literals(host, loaded):
    model, clip, _ = loaded
    with pytest.raises(ValueError, match="model: got str 'sd15.safetensors', not a MODEL: connect the output of your "
                                         "checkpoint loader"):
        _nodes()["ZOODiPQuantizeModel"]().quantize("sd15.safetensors", "int8", "int8")
    with pytest.raises(ValueError, match="clip: got int 7, not a CLIP"):
        _nodes()["ZOODiPQuantizeModel"]().quantize(model, "int8", "int8", clip=7)
    photo = torch.rand(1, 64, 64, 3)
    with pytest.raises(ValueError, match="images: got a str, not an IMAGE: connect an image output"):
        _nodes()["ZOODiPEvaluate"]().evaluate("out.png", photo, "a dog", "none", "ViT-B-32")
    with pytest.raises(ValueError, match="references: the batch is empty"):
        _nodes()["ZOODiPEvaluate"]().evaluate(photo, photo[:0], "a dog", "none", "ViT-B-32")


def test_loss_graph_and_apply_refuse_literals(host, loaded):
    _, clip, _ = loaded
    with pytest.raises(ValueError, match="loss: got list"):
        _nodes()["ZOODiPLossGraph"]().plot([0.1, 0.2])
    with pytest.raises(ValueError, match="embedding: got str"):
        _nodes()["ZOODiPApplyEmbedding"]().apply(clip, "tok", "")


def test_a_file_name_that_cannot_be_a_prompt_word_asks_for_a_name(host, loaded, clean_embeddings):
    _, clip, _ = loaded
    _st(clean_embeddings / "My Dog.safetensors", emb_params=torch.zeros(1, 768))
    emb = _nodes()["ZOODiPLoadEmbedding"]().load("My Dog.safetensors")[0]
    with pytest.raises(ValueError, match="token_name is empty, and the embedding's own name cannot be used: name 'My Dog' .* Type a token_name"):
        _nodes()["ZOODiPApplyEmbedding"]().apply(clip, emb, "")
    with pytest.raises(ValueError, match="filename is empty, and the embedding's own name cannot be used"):
        _nodes()["ZOODiPSaveEmbedding"]().save(emb, "", False)
    assert _nodes()["ZOODiPApplyEmbedding"]().apply(clip, emb, "my-dog")[0] is not None
    assert files_under(clean_embeddings) == {"My Dog.safetensors"}


@pytest.mark.parametrize("node,inputs,bad", [
    ("ZOODiPLoadEmbedding", {"embedding_name": "../checkpoints/zoodip-tiny-sd15.safetensors"}, "embedding_name"),
    ("ZOODiPLoadImages", {"folder": "../models", "resolution": 64}, "folder"),
    ("ZOODiPEvaluate", {"images": ["2", 0], "references": ["2", 0], "prompt": "a dog", "clip_architecture": "ViT-B-32",
                        "clip_model": "../checkpoints/zoodip-tiny-sd15.safetensors"}, "clip_model"),
])
def test_paths_out_of_the_folders_are_refused_when_queued(host, tiny_ckpt, node, inputs, bad):
    prompt = {"1": {"class_type": node, "inputs": inputs},
              "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
              "3": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    errors = host.validate(prompt)
    assert errors and not [e for e in errors if e.get("type") == "execution_error"]
    # refused for the path, on that one input, not for anything else in the prompt
    assert {(e["node_id"], (e.get("extra_info") or {}).get("input_name")) for e in errors} == {("1", bad)}, errors
