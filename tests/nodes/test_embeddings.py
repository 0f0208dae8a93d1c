"""Save / Load / Apply Embedding against the host's own embedding: loader."""

from __future__ import annotations

import pytest
import torch


def _nodes():
    import nodes

    return nodes.NODE_CLASS_MAPPINGS


def _emb(host, name="saved", width=768, vectors=2):
    import importlib

    E = importlib.import_module(host.pack_module.__name__ + ".zoodip.embedding")
    g = torch.Generator().manual_seed(3)
    return E.Embedding(name, {"l": torch.randn(vectors, width, generator=g)}, {"zoodip.step": "5"})


def _encode(clip, text):
    import nodes

    with torch.inference_mode():
        return nodes.CLIPTextEncode().encode(clip, text)[0][0][0]


def test_save_refuses_to_overwrite_unless_asked(host, clean_embeddings):
    save = _nodes()["ZOODiPSaveEmbedding"]()
    first = _emb(host)
    save.save(first, "keep", False)
    path = clean_embeddings / "keep.safetensors"
    original = path.read_bytes()
    second = _emb(host)
    second.vectors["l"] = second.vectors["l"] * 2
    with pytest.raises(FileExistsError, match="set overwrite to replace it"):
        save.save(second, "keep", False)
    assert path.read_bytes() == original  # untouched
    assert not [p for p in clean_embeddings.iterdir() if p.name.endswith(".tmp")]  # no leftovers
    save.save(second, "keep", True)
    assert path.read_bytes() != original


def test_saved_file_is_read_by_the_host_loader_with_metadata(host, clean_embeddings):
    import comfy.sd1_clip
    from safetensors import safe_open

    emb = _emb(host)
    _nodes()["ZOODiPSaveEmbedding"]().save(emb, "", False)
    path = clean_embeddings / "saved.safetensors"
    loaded = comfy.sd1_clip.load_embed("saved", [str(clean_embeddings)], 768, "clip_l")
    assert torch.equal(loaded, emb.vectors["l"])
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["zoodip.step"] == "5"


def test_load_and_apply_give_the_trained_conditioning(host, loaded, clean_embeddings):
    _, clip, _ = loaded
    emb = _emb(host, "applied")
    N = _nodes()
    N["ZOODiPSaveEmbedding"]().save(emb, "", False)
    back = N["ZOODiPLoadEmbedding"]().load("applied.safetensors")[0]
    assert torch.equal(back.vectors[next(iter(back.vectors))], emb.vectors["l"])
    applied = N["ZOODiPApplyEmbedding"]().apply(clip, back, "other-name")[0]
    via_file = _encode(clip, "a photo of embedding:applied")
    via_apply = _encode(applied, "a photo of embedding:other-name")
    assert torch.equal(via_file, via_apply)


def test_a1111_pt_is_read_safely(host, loaded, clean_embeddings):
    vec = torch.randn(1, 768)
    torch.save({"string_to_param": {"*": vec}, "name": "old", "step": 100}, clean_embeddings / "old.pt")
    emb = _nodes()["ZOODiPLoadEmbedding"]().load("old.pt")[0]
    assert torch.equal(next(iter(emb.vectors.values())), vec)


def test_apply_refuses_an_embedding_of_another_width(host, loaded):
    _, clip, _ = loaded
    with pytest.raises(ValueError, match="width 1024 but this text encoder needs 768"):
        _nodes()["ZOODiPApplyEmbedding"]().apply(clip, _emb(host, width=1024), "x")


def test_apply_refuses_an_sdxl_embedding_on_sd1(host, loaded):
    _, clip, _ = loaded
    emb = _emb(host)
    emb.vectors = {"l": torch.zeros(1, 768), "g": torch.zeros(1, 1280)}
    with pytest.raises(ValueError, match="two text encoders"):
        _nodes()["ZOODiPApplyEmbedding"]().apply(clip, emb, "x")


@pytest.mark.parametrize("bad", ["../escape", "a/b", "nul", "has space"])
def test_save_refuses_bad_filenames_at_validation(host, bad):
    msg = _nodes()["ZOODiPSaveEmbedding"].validate_inputs(bad)
    assert isinstance(msg, str) and "filename" in msg
