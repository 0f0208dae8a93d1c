"""Loss Graph and Evaluate Token in the host."""

from __future__ import annotations

import json

import pytest
import torch


def _nodes():
    import nodes

    return nodes.NODE_CLASS_MAPPINGS


def test_loss_graph_from_a_training_run(host, tiny_ckpt, photos):
    from .prompts import train_prompt

    prompt = train_prompt(tiny_ckpt, photos, token="graphed", steps=6, held_out_every=3)
    prompt["6"] = {"class_type": "ZOODiPLossGraph", "inputs": {"loss": ["5", 2]}}
    r = host.run_prompt(prompt)
    assert r.ok, r.errors
    image = r.value("6", 0)
    assert image.shape[0] == 1 and image.shape[-1] == 3 and image.shape[1] > 100
    shown = r.ui["6"]["images"][0]
    assert (host.temp_dir / shown["subfolder"] / shown["filename"]).is_file()
    history = r.value("5", 2)
    assert [s for s, _ in history.held_out] == [0, 3, 6]


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_open_clip(host):
    import open_clip

    folder = host.models_dir / "open_clip"
    folder.mkdir(exist_ok=True)
    cfg = folder / "zoodip-tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("zoodip-tiny-clip", pretrained=None)
    weights = folder / "zoodip-tiny-clip.pt"
    torch.save(model.state_dict(), weights)
    return weights


def test_evaluate_matches_a_direct_open_clip_computation(host, tiny_open_clip):
    import open_clip

    g = torch.Generator().manual_seed(0)
    generated = torch.rand(3, 48, 40, 3, generator=g)
    references = torch.rand(2, 40, 48, 3, generator=g)
    prompt = "a photo of a dog"
    out = _nodes()["ZOODiPEvaluate"]().evaluate(generated, references, prompt, tiny_open_clip.name, "ViT-B-32")
    clip_i, clip_t, dino = out["result"]
    assert dino == -1.0
    assert "CLIP-I" in out["ui"]["text"][0]

    # the same scores computed directly with open_clip's own model, transform and tokenizer
    model, _, preprocess = open_clip.create_model_and_transforms("zoodip-tiny-clip", pretrained=str(tiny_open_clip))
    model.eval()
    from PIL import Image

    def pil(batch):
        return [Image.fromarray((x.numpy() * 255).round().astype("uint8")) for x in batch]

    with torch.no_grad():
        gi = model.encode_image(torch.stack([preprocess(i) for i in pil(generated)]))
        ri = model.encode_image(torch.stack([preprocess(i) for i in pil(references)]))
        te = model.encode_text(open_clip.get_tokenizer("zoodip-tiny-clip")([prompt]))
    gi, ri, te = (torch.nn.functional.normalize(x, dim=-1) for x in (gi, ri, te))
    assert clip_i == pytest.approx(float((gi @ ri.T).mean()), abs=1e-6)
    assert clip_t == pytest.approx(float((gi @ te.T).mean()), abs=1e-6)


def test_evaluate_with_dino_matches_a_direct_computation(host, tiny_open_clip):
    import timm
    import timm.data
    from safetensors.torch import save_file

    folder = host.models_dir / "dino"
    folder.mkdir(exist_ok=True)
    torch.manual_seed(1)
    dino = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()
    save_file({k: v.contiguous() for k, v in dino.state_dict().items()}, str(folder / "tiny-dino.safetensors"))
    g = torch.Generator().manual_seed(2)
    generated, references = torch.rand(2, 64, 64, 3, generator=g), torch.rand(2, 64, 64, 3, generator=g)
    node = _nodes()["ZOODiPEvaluate"]()
    *_, score = node.evaluate(generated, references, "a dog", tiny_open_clip.name, "ViT-B-32",
                              "tiny-dino.safetensors", "vit_tiny_patch16_224")["result"]
    from PIL import Image

    tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=dino))
    with torch.no_grad():
        a = dino(torch.stack([tf(Image.fromarray((x.numpy() * 255).round().astype("uint8"))) for x in generated]))
        b = dino(torch.stack([tf(Image.fromarray((x.numpy() * 255).round().astype("uint8"))) for x in references]))
    a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    assert score == pytest.approx(float((a @ b.T).mean()), abs=1e-6)


def test_evaluate_refuses_without_a_model(host):
    with pytest.raises(ValueError, match="no open_clip model selected"):
        _nodes()["ZOODiPEvaluate"]().evaluate(torch.rand(1, 8, 8, 3), torch.rand(1, 8, 8, 3), "x", "none", "ViT-B-32")
