"""Training on quantized models in the real host: fp8 (UNETLoader), Quantize Model (int8, nf4) and a
model whose layers dequantize inside forward through the host's custom operations (how GGUF/NF4
packs plug in). Each run leaves the weights bit-identical, builds no autograd graph and adds no
weight patches; the held-out loss falls over the few steps CI can afford. Quantize Model's output
samples with KSampler and its input model is left as it was.
"""

from __future__ import annotations

import hashlib
import importlib
import weakref

import pytest
import torch
import torch.nn.functional as F

from .prompts import sample_nodes

pytest.importorskip("bitsandbytes")

UNET_FILE = "zoodip-tiny-unet.safetensors"
STEPS = 2  # held-out loss at steps 0 and 2 (4 fixed draws each)


def _pack(host, name: str):
    return importlib.import_module(f"{host.pack_module.__name__}.{name}")


def _digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _quantize(model, linear, conv, clip=None, quantize_clip=True):
    import nodes

    with torch.inference_mode():  # as the executor runs nodes
        return nodes.NODE_CLASS_MAPPINGS["ZOODiPQuantizeModel"]().quantize(model, linear, conv, clip, quantize_clip)


@pytest.fixture(scope="module")
def images(host, photos):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS["ZOODiPLoadImages"]().load(photos, 64)[0]


@pytest.fixture
def dequantize_counter(host, monkeypatch):
    """How many dequantized weights of the pack's layers were alive at once, at most."""
    ops = _pack(host, "nodes.ops")
    live: list = []
    seen = {"calls": 0, "max_alive": 0}

    def wrap(orig):
        def dequantized(self, dtype, device):
            w = orig(self, dtype, device)
            live[:] = [r for r in live if r() is not None] + [weakref.ref(w)]
            seen["calls"] += 1
            seen["max_alive"] = max(seen["max_alive"], len(live))
            return w

        return dequantized

    for cls in (ops.QuantConv2d, ops.linear_class("int8"), ops.linear_class("nf4")):
        monkeypatch.setattr(cls, "dequantized", wrap(cls.dequantized))
    return seen


def train_checked(model, clip, vae, images, **kw):
    """Train a few steps with Train Token and check: weights bit-identical, no grad, no patches."""
    import nodes

    unet_before, te_before = _digest(model.model), _digest(clip.cond_stage_model)
    grad_seen = []
    hook = model.model.diffusion_model.register_forward_hook(
        lambda m, i, o: grad_seen.append(torch.is_grad_enabled() or o.requires_grad))
    cfg = nodes.NODE_CLASS_MAPPINGS
    args = dict(token_name="q-tok", init_word="dog", num_vectors=1, steps=STEPS, learning_rate=5e-3, queries=2,
                perturbation=1e-3, seed=0, puts=cfg["PUTSSamplerConfig"]().make(500, 900)[0], subspace=None,
                prompt_templates="a photo of a {token}", held_out_every=STEPS)
    args.update(kw)
    try:
        with torch.enable_grad(), torch.inference_mode():  # the executor's mode; grad on outside changes nothing
            out = cfg["ZOODiPTrainToken"]().train(model, clip, vae, images, **args)
    finally:
        hook.remove()
    out = out["result"] if isinstance(out, dict) else out  # (clip, embedding, loss, ...) either way
    emb, history = out[1], out[2]
    assert grad_seen and not any(grad_seen)
    assert _digest(model.model) == unet_before
    assert _digest(clip.cond_stage_model) == te_before
    assert not model.patches and not model.backup and not clip.patcher.patches
    assert model.model.current_patcher is None
    assert emb.vectors["l"].grad_fn is None
    (k0, start), *_, (k1, end) = history.held_out
    assert (k0, k1) == (0, STEPS)
    assert end < start, history.held_out  # the held-out loss went down
    print(f"held-out loss {history.held_out}, step losses {history.loss}")
    return history


# --- the node ---

def test_node_is_registered_with_a_tooltip_on_every_input(host):
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS["ZOODiPQuantizeModel"]
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["ZOODiPQuantizeModel"] == "Quantize Model"
    assert cls.CATEGORY == "ZOODiP" and tuple(cls.RETURN_TYPES) == ("MODEL", "CLIP")
    spec = cls.INPUT_TYPES()
    inputs = {**spec["required"], **spec["optional"]}
    assert set(inputs) == {"model", "linear", "conv", "clip", "quantize_clip"}
    assert inputs["linear"][0] == ["int8", "nf4", "fp4", "none"]
    assert inputs["conv"][0] == ["int8", "nf4", "none"]
    assert all(opts.get("tooltip") for _, opts in inputs.values())


def test_quantized_model_samples_with_ksampler_next_to_the_input_model(host, tiny_ckpt):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_ckpt}},
        "2": {"class_type": "ZOODiPQuantizeModel", "inputs": {"model": ["1", 0], "linear": "int8", "conv": "int8"}},
    }
    prompt.update(sample_nodes(["1", 1], ["2", 0], ["1", 2], "a photo of a dog", first_id=10))
    prompt.update(sample_nodes(["1", 1], ["1", 0], ["1", 2], "a photo of a dog", first_id=20))  # the input, elsewhere
    before = set(host.output_files())
    r = host.run_prompt(prompt)
    assert r.ok, r.errors
    assert len(set(host.output_files()) - before) == 2
    q = r.value("13", 0)["samples"]
    f = r.value("23", 0)["samples"]
    assert torch.isfinite(q).all() and not torch.equal(q, f)
    assert float((q - f).norm() / f.norm()) < 0.2  # int8 is close to the float model's result


@pytest.fixture(scope="module")
def int8_pair(host, loaded):
    """Quantize Model (int8 Linear + int8 conv, CLIP too) on the session's loaded checkpoint, with
    what the inputs looked like before and after."""
    model, clip, _ = loaded

    def state():
        return {"digests": (_digest(model.model), _digest(clip.cond_stage_model)),
                "modules": [id(m) for m in model.model.modules()] + [id(m) for m in clip.cond_stage_model.modules()],
                "size": model.model_size(), "patches": dict(model.patches)}

    before = state()
    qm, qc = _quantize(model, "int8", "int8", clip, True)
    return {"model": qm, "clip": qc, "before": before, "after": state()}


def test_input_model_and_clip_are_left_unchanged(host, loaded, int8_pair):
    model, clip, _ = loaded
    qm, qc = int8_pair["model"], int8_pair["clip"]
    assert int8_pair["after"] == int8_pair["before"]
    assert qm is not model and qm.model is not model.model and qc.cond_stage_model is not clip.cond_stage_model
    assert qc.patcher.model is qc.cond_stage_model and qc.tokenizer is clip.tokenizer
    # the host's own size accounting sees the smaller weights
    assert qm.model_size() < 0.3 * model.model_size()
    assert qc.patcher.model_size() < 0.55 * clip.patcher.model_size()  # fp16 -> int8, the token table too
    te = qc.cond_stage_model.clip_l.transformer
    assert isinstance(te.get_input_embeddings(), _pack(host, "nodes.ops").QuantEmbedding)
    assert type(te.text_model.embeddings.position_embedding).__name__ == "Embedding"  # read by .weight: kept
    # no CLIP connected: the CLIP output is empty; quantize_clip off: the input CLIP itself
    assert _quantize(model, "none", "none")[1] is None
    assert _quantize(model, "none", "none", clip, False)[1] is clip


def test_model_management_loads_offloads_and_partially_loads_it(host, int8_pair):
    import comfy.model_management as mm

    qm = int8_pair["model"]
    x = torch.randn(1, 4, 8, 8)
    t = torch.tensor([500.0])
    ctx = torch.randn(1, 77, 768)

    def run():
        with torch.inference_mode():
            return qm.model.apply_model(x, t, c_crossattn=ctx)

    mm.load_models_gpu([qm])
    assert any(lm.model is qm for lm in mm.current_loaded_models)
    full = run()
    mm.unload_all_models()
    assert qm.model.model_loaded_weight_memory == 0
    # the partial ("low VRAM") path: every quantized layer is listed as castable and still runs
    qm.patch_model(qm.load_device, lowvram_model_memory=1, load_weights=True)
    try:
        assert qm.model.model_lowvram
        assert torch.equal(run(), full)
        freed = qm.partially_unload(qm.offload_device, memory_to_free=qm.model_size())
        assert freed >= 0 and torch.equal(run(), full)
    finally:
        qm.detach()
    mm.load_models_gpu([qm])
    assert torch.equal(run(), full)
    mm.unload_all_models()


def test_lora_before_quantize_is_baked_in_and_after_it_is_refused(host, loaded):
    import comfy.model_management as mm

    model, _, _ = loaded
    names = [n for n, _ in model.model.diffusion_model.named_modules()]
    linear = "diffusion_model." + next(n for n in names if n.endswith("attn2.to_k"))
    norm = "diffusion_model." + next(n for n in names if n.endswith("norm1"))
    w = model.model.get_submodule(linear).weight
    delta = 0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0))
    lora = model.clone()
    lora.add_patches({linear + ".weight": (delta,),
                      norm + ".weight": (torch.full_like(model.model.get_submodule(norm).weight, 0.1),)})
    qm, _ = _quantize(lora, "int8", "none")
    deq = qm.model.get_submodule(linear).dequantized(torch.float32, torch.device("cpu"))
    w = w.detach()
    assert float((deq - (w + delta)).norm() / (w + delta).norm()) < 0.01  # the patch is in the int8 weights
    assert linear + ".weight" not in qm.patches and norm + ".weight" in qm.patches  # a float layer's patch carries over
    assert lora.patches.keys() == {linear + ".weight", norm + ".weight"}  # and the input patcher is untouched

    after = qm.clone()
    after.add_patches({linear + ".weight": (delta,)})
    try:
        with pytest.raises(RuntimeError, match=r"LoRA.*before Quantize Model"):
            mm.load_models_gpu([after])  # what KSampler does first
    finally:
        mm.unload_all_models()


# --- training on each precision ---

def test_training_on_int8_model_and_clip(host, loaded, int8_pair, images, dequantize_counter):
    _, _, vae = loaded
    train_checked(int8_pair["model"], int8_pair["clip"], vae, images)
    # one layer's dequantized weight at a time: never a full-precision copy of the model
    assert dequantize_counter["calls"] > 0 and dequantize_counter["max_alive"] == 1


def test_training_on_nf4_linear_and_int8_conv(host, loaded, images, dequantize_counter):
    model, clip, vae = loaded
    qm, qc = _quantize(model, "nf4", "int8", clip, True)
    kinds = {type(m).__name__ for m in qm.model.diffusion_model.modules()}
    assert {"Linear4bit", "QuantConv2d"} <= kinds and "Linear" not in kinds and "Conv2d" not in kinds
    assert qc.cond_stage_model.clip_l.transformer.get_input_embeddings().fmt == "nf4"
    # the quantized CLIP's conditioning stays near the float one's (random weights over 12 layers
    # amplify 4-bit rounding: ~0.3 here; wrong dequantization would be ~1.4)
    tokens = clip.tokenize("a photo of a dog")
    with torch.inference_mode():
        ref, got = clip.encode_from_tokens(tokens), qc.encode_from_tokens(tokens)
    assert 0 < float((got - ref).norm() / ref.norm()) < 0.5
    train_checked(qm, qc, vae, images)
    assert dequantize_counter["calls"] > 0 and dequantize_counter["max_alive"] == 1


@pytest.fixture(scope="module")
def unet_file(host, tiny_ckpt):
    """The tiny checkpoint's UNet as a diffusion-model file, for UNETLoader."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = host.model_dir("unet") / UNET_FILE
    if not path.exists():
        src = host.model_dir("checkpoints") / tiny_ckpt
        prefix = "model.diffusion_model."
        with safe_open(str(src), framework="pt") as f:
            sd = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
        save_file(sd, str(path))
    return UNET_FILE


@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn", "fp8_e5m2"])
def test_training_on_fp8_from_unet_loader(host, loaded, unet_file, images, weight_dtype):
    import nodes

    _, clip, vae = loaded
    model = nodes.UNETLoader().load_unet(unet_file, weight_dtype)[0]
    dtypes = {p.dtype for n, p in model.model.diffusion_model.named_parameters() if n.endswith("weight") and p.ndim > 1}
    assert dtypes == {getattr(torch, f"float8_{weight_dtype[4:]}")}
    train_checked(model, clip, vae, images)


# --- a model whose layers dequantize inside forward (custom operations) ---

def _int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.float()
    scale = w.abs().reshape(w.shape[0], -1).amax(dim=1).clamp_min(1e-12) / 127
    q = torch.round(w / scale.view(-1, *[1] * (w.ndim - 1))).clamp(-127, 127).to(torch.int8)
    return q, scale


def _int8_ops():
    """Custom operations in the style of GGUF/NF4 packs: int8 weights + scales, dequantized per call."""
    import comfy.ops

    class Int8Mixin:
        def _load_from_state_dict(self, sd, prefix, metadata, strict, missing, unexpected, errors):
            w = sd.get(prefix + "weight")
            if w is None:
                missing.append(prefix + "weight")
                return
            q, scale = _int8_rows(w)
            self.weight = torch.nn.Parameter(q, requires_grad=False)
            self.register_buffer("weight_scale", scale)
            if prefix + "bias" in sd:
                self.bias = torch.nn.Parameter(sd[prefix + "bias"].float(), requires_grad=False)

        def dequant(self, input):
            weight, bias = comfy.ops.cast_bias_weight(self, input)  # the int8 values in the input's dtype
            scale = self.weight_scale.to(device=weight.device, dtype=weight.dtype)
            return weight * scale.view(-1, *[1] * (weight.ndim - 1)), bias

    class Int8Ops(comfy.ops.manual_cast):
        class Linear(Int8Mixin, comfy.ops.manual_cast.Linear):
            def forward_comfy_cast_weights(self, input):
                weight, bias = self.dequant(input)
                return F.linear(input, weight, bias)

        class Conv2d(Int8Mixin, comfy.ops.manual_cast.Conv2d):
            def forward_comfy_cast_weights(self, input):
                weight, bias = self.dequant(input)
                return self._conv_forward(input, weight, bias)

    return Int8Ops


@pytest.fixture(scope="module")
def custom_ops_model(host, tiny_ckpt):
    import comfy.sd

    path = host.model_dir("checkpoints") / tiny_ckpt
    ops = _int8_ops()
    model = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=False,
                                                  model_options={"custom_operations": ops})[0]
    return model, ops


def test_training_on_a_model_with_custom_dequantizing_operations(host, loaded, images, custom_ops_model):
    model, ops = custom_ops_model
    unet = model.model.diffusion_model
    layers = [m for m in unet.modules() if isinstance(m, (ops.Linear, ops.Conv2d))]
    assert layers and all(m.weight.dtype == torch.int8 for m in layers)
    _, clip, vae = loaded
    train_checked(model, clip, vae, images)


def test_quantize_model_refuses_a_model_that_is_already_quantized(host, custom_ops_model):
    quant = _pack(host, "zoodip.quant")
    model, _ = custom_ops_model
    with pytest.raises(quant.QuantizationError, match=r"already quantized.*needs a model loaded with float weights"):
        _quantize(model, "int8", "int8")
    qm, _ = _quantize(model, "none", "none")  # nothing to quantize: a plain copy works
    assert qm.model is not model.model


# --- layers training cannot work through are refused before the first step ---

def _settings(host):
    return _pack(host, "zoodip.settings").TrainSettings("refused", "dog", steps=1, prompt_templates="a photo of a {token}")


def test_a_stock_llm_int8_layer_on_a_gpu_is_refused_before_training(host, loaded, images):
    import bitsandbytes as bnb

    training = _pack(host, "nodes.training")
    model, clip, vae = loaded
    copy, _ = _quantize(model, "none", "none")  # a plain copy (shared weights) to put the layer in
    name = next(n for n, _ in copy.model.diffusion_model.named_modules() if n.endswith("attn2.to_k"))
    parent, leaf = copy.model.diffusion_model.get_submodule(name.rsplit(".", 1)[0]), name.rsplit(".", 1)[1]
    old = getattr(parent, leaf)
    stock = bnb.nn.Linear8bitLt(old.in_features, old.out_features, bias=old.bias is not None, has_fp16_weights=False)
    stock.weight = bnb.nn.Int8Params(old.weight.detach().clone(), requires_grad=False, has_fp16_weights=False)
    setattr(parent, leaf, stock.to("cpu"))
    copy.load_device = torch.device("cuda")  # only read by the check: on a GPU this layer multiplies in int8
    with pytest.raises(ValueError, match=rf"layer {name} \(Linear8bitLt\).*rounds its inputs to int8.*Quantize Model"):
        with torch.inference_mode():
            training.prepare(copy, clip, vae, images, _settings(host))


def test_fp8_matrix_multiplication_is_refused_where_it_applies(host, loaded, unet_file, images, monkeypatch):
    import comfy.model_management as mm

    import nodes

    training = _pack(host, "nodes.training")
    _, clip, vae = loaded
    monkeypatch.setattr(mm, "supports_fp8_compute", lambda *a, **k: True)  # as on an fp8-capable GPU
    model = nodes.UNETLoader().load_unet(unet_file, "fp8_e4m3fn_fast")[0]
    check = _pack(host, "nodes.quantize").check_trainable
    check(model, clip)  # this host keeps SD1.x UNets in training mode, where its fp8 ops skip fp8 matmul
    model.model.diffusion_model.eval()  # where they would use it
    with pytest.raises(ValueError, match=r"multiplies in fp8 on this GPU.*weight_dtype fp8_e4m3fn instead"):
        with torch.inference_mode():
            training.prepare(model, clip, vae, images, _settings(host))
