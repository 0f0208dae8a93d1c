"""Previews during training: live preview events, images in the node's UI and as an output."""

from __future__ import annotations

from .prompts import train_prompt


def test_previews_every_k_steps(host, tiny_ckpt, photos):
    prompt = train_prompt(tiny_ckpt, photos, token="previewed", steps=6, preview_every=3,
                          preview_prompt="a photo of {token}")
    prompt["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 3]}}
    r = host.run_prompt(prompt)
    assert r.ok, r.errors
    previews = r.value("5", 3)
    assert previews.shape == (2, 64, 64, 3)  # steps 3 and 6, at the photos' size
    assert not previews.isnan().any()
    assert len(r.ui["5"]["images"]) == 2
    for shown in r.ui["5"]["images"]:
        assert (host.temp_dir / shown["subfolder"] / shown["filename"]).is_file()
    # the live preview travelled with the training node's progress
    with_preview = [m for m in r.messages if m.event == "progress" and m.data.get("node") == "5"]
    assert with_preview[-1].data["value"] == 6
    binary = [m for m in r.messages if isinstance(m.event, int)]
    assert len(binary) >= 2, sorted({str(m.event) for m in r.messages})  # the two preview images


def test_no_previews_gives_one_black_image(host, tiny_ckpt, photos):
    prompt = train_prompt(tiny_ckpt, photos, token="nopreview", steps=2)
    prompt["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 3]}}
    r = host.run_prompt(prompt)
    assert r.ok, r.errors
    out = r.value("5", 3)
    assert out.shape == (1, 64, 64, 3) and float(out.abs().sum()) == 0.0
