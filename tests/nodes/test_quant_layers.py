"""The quantized layers (nodes/ops.py: the host's comfy.ops layer classes, with zoodip.quant's maths):
layer formats, the copy-on-quantize walk, weight-only forward, autograd. In the host, headless.

``quant`` is the pack's ``nodes.ops`` with the engine's ``zoodip.quant`` behind it (its maths,
``resident_bytes``, ``QuantizationError``), as the pack loaded them.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def quant(host):
    engine = importlib.import_module(f"{host.pack_module.__name__}.zoodip.quant")
    ops = importlib.import_module(f"{host.pack_module.__name__}.nodes.ops")
    return SimpleNamespace(**{**vars(engine), **vars(ops)})


def _net(seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(4, 32, 3, padding=1),
        torch.nn.SiLU(),
        torch.nn.Conv2d(32, 32, 1),
        torch.nn.GroupNorm(4, 32),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 8 * 8, 128),
        torch.nn.GELU(),
        torch.nn.Linear(128, 16),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p.shape[-1]) ** 0.5))
    return net.requires_grad_(False)


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("linear", "conv", "tol"), [("int8", "int8", 0.02), ("nf4", "int8", 0.15), ("fp4", "nf4", 0.3),
                                                     ("none", "int8", 0.02), ("int8", "none", 0.02)])
def test_formats_replace_the_layers_and_stay_close_to_float(linear, conv, tol, quant):
    net = _net()
    q, report = quant.quantize_module(net, linear, conv)
    kinds = {name: type(m) for name, m in q.named_modules()}
    if linear == "int8":
        assert issubclass(kinds["5"], bnb.nn.Linear8bitLt) and not q[5].state.has_fp16_weights
        assert q[5].weight.dtype == torch.int8
    elif linear in ("nf4", "fp4"):
        assert issubclass(kinds["5"], bnb.nn.Linear4bit) and q[5].weight.quant_state.quant_type == linear
    else:
        assert kinds["5"] is torch.nn.Linear
    if conv != "none":
        assert isinstance(q[0], quant.QuantConv2d) and q[0].fmt == conv
    else:
        assert kinds["0"] is torch.nn.Conv2d
    # the 1x1 convolution is a per-pixel Linear layer: it takes the Linear format
    if linear != "none":
        assert isinstance(q[2], quant.QuantConv2d) and q[2].fmt == linear
    else:
        assert isinstance(q[2], quant.QuantConv2d) and q[2].fmt == conv
    assert kinds["3"] is torch.nn.GroupNorm  # everything else is kept as it is
    with torch.no_grad():
        assert _rel(q(_x()), net(_x())) < tol
    n_lin = 3 if linear != "none" else 0
    n_conv = (1 if linear != "none" else 2) if conv != "none" else 0
    assert sum(report.layers.values()) == n_lin + n_conv


def test_the_input_tree_is_not_changed_and_untouched_tensors_are_shared_not_copied(quant):
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params_before = {k: (id(p), p.data_ptr()) for k, p in net.named_parameters()}
    modules_before = {k: id(m) for k, m in net.named_modules()}
    q, _ = quant.quantize_module(net, "int8", "int8")
    assert {k: id(m) for k, m in net.named_modules()} == modules_before
    assert {k: (id(p), p.data_ptr()) for k, p in net.named_parameters()} == params_before
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the kept GroupNorm and the quantized layers' biases point at the same memory ...
    assert q[3].weight.data_ptr() == net[3].weight.data_ptr()
    assert q[5].bias.data_ptr() == net[5].bias.data_ptr()
    # ... through their own Parameter objects and modules, so moving/casting the copy leaves the input alone
    assert q[3] is not net[3] and q[3].weight is not net[3].weight
    q.half()
    assert net[3].weight.dtype == torch.float32 and torch.equal(net[3].weight, before["3.weight"])
    # and the original still computes what it did
    with torch.no_grad():
        net(_x())


def test_a_second_walk_shares_module_structure_once(quant):
    shared = torch.nn.Linear(8, 8)
    net = torch.nn.Sequential(shared, torch.nn.ReLU(), shared)
    q, report = quant.quantize_module(net, "int8", "none")
    assert q[0] is q[2]  # a module used twice stays one module
    assert report.layers == {"Linear->int8": 1}


def test_resident_bytes_shrink_by_the_format(quant):
    net = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Conv2d(64, 64, 3))
    fp32 = quant.resident_bytes(net)
    int8 = quant.resident_bytes(quant.quantize_module(net, "int8", "int8")[0])
    nf4 = quant.resident_bytes(quant.quantize_module(net, "nf4", "nf4")[0])
    assert int8 <= 0.27 * fp32
    assert nf4 <= 0.16 * fp32
    # storage shared with the original is counted once
    q = quant.quantize_module(net, "none", "int8")[0]
    assert quant.resident_bytes(net, q) < quant.resident_bytes(net) + quant.resident_bytes(q)


def test_forward_never_changes_the_stored_weights(quant):
    net = _net()
    q, _ = quant.quantize_module(net, "nf4", "int8")
    sd = {k: v.clone() for k, v in q.state_dict().items()}
    with torch.no_grad():
        q(_x())
        for dtype in (torch.bfloat16, torch.float16):  # the compute dtype follows the input; storage does not
            assert q[5](torch.randn(2, 2048).to(dtype)).dtype == dtype
            assert q[0](_x().to(dtype)).dtype == dtype
    after = q.state_dict()
    assert sd.keys() == after.keys()
    for k in sd:
        assert torch.equal(sd[k], after[k]), k


def test_weight_only_forward_is_linear_in_small_input_changes(quant):
    """Activations are not quantized: a tiny input change moves the output by W_deq @ change, as a
    float layer would (bitsandbytes' LLM.int8 matmul would round such a change away)."""
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(256, 128)
    for fmt in ("int8", "nf4"):
        q = quant.quantized_linear(lin.weight.detach(), lin.bias.detach(), fmt)
        x = torch.randn(4, 256, generator=g)
        d = 1e-3 * torch.randn(4, 256, generator=g)
        with torch.no_grad():
            got = q(x + d) - q(x)
            want = torch.nn.functional.linear(d, q.dequantized(torch.float32, x.device))
        assert _rel(got, want) < 1e-3, fmt


def test_input_gradient_matches_the_dequantized_float_layer_and_keeps_no_float_weights(quant):
    net = _net()
    q, _ = quant.quantize_module(net, "int8", "int8")
    # reference: the same layers as float modules with the dequantized weights
    ref = _net()
    with torch.no_grad():
        for i in (0, 2, 5, 7):
            ref[i].weight.copy_(q[i].dequantized(torch.float32, torch.device("cpu")))
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    x1 = _x().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        q(x1).square().sum().backward()
    x2 = _x().requires_grad_(True)
    ref(x2).square().sum().backward()
    assert _rel(x1.grad, x2.grad) < 1e-4
    weight_sizes = {net[i].weight.numel() for i in (0, 2, 5, 7)}
    assert not weight_sizes & set(saved)  # autograd kept activations only, no dequantized weight
    # the stored weights got no gradient and require none
    assert all(not p.requires_grad and p.grad is None for p in q.parameters())


def test_host_patch_hooks_are_refused_clearly(quant):
    q = quant.quantized_linear(torch.randn(16, 32), None, "int8")
    q.layer_name = "blocks.0.proj"
    with pytest.raises(RuntimeError, match="blocks.0.proj.*before Quantize Model"):
        q.set_weight(torch.zeros(16, 32))
    with pytest.raises(RuntimeError, match="LoRA"):  # a host reads this first, before it touches the weight
        getattr(q, "convert_weight")  # noqa: B009
    q.weight_function = [lambda w: w]
    with pytest.raises(RuntimeError, match="LoRA"):
        q(torch.randn(2, 32))


def test_layers_that_cannot_be_quantized_are_refused_before_any_work(quant):
    class Packed(torch.nn.Linear):  # another pack's format: integer weights in a Linear
        def __init__(self):
            super().__init__(8, 8)
            self.weight = torch.nn.Parameter(torch.zeros(8, 8, dtype=torch.uint8), requires_grad=False)

    net = torch.nn.Sequential(torch.nn.Linear(8, 8), Packed())
    with pytest.raises(quant.QuantizationError, match=r"layer 1 \(Packed\).*already quantized"):
        quant.quantize_module(net, "int8", "none")
    q, _ = quant.quantize_module(torch.nn.Sequential(torch.nn.Linear(8, 8)), "int8", "none")
    with pytest.raises(quant.QuantizationError, match="already quantized"):
        quant.quantize_module(q, "nf4", "none")
    with pytest.raises(quant.QuantizationError, match="linear must be one of"):
        quant.quantize_module(net, "int4", "none")
    with pytest.raises(quant.QuantizationError, match="conv must be one of"):
        quant.quantize_module(net, "none", "fp4")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_weights_stored_in_any_float_dtype_can_be_quantized(dtype, quant):
    net = _net()
    low = _net().to(dtype)  # e.g. a model the host loaded with weight_dtype fp8
    for a, b in zip(net.parameters(), low.parameters()):
        a.data = b.data.float()  # the reference: the same (rounded) values in fp32
    q, _ = quant.quantize_module(low, "int8", "int8")
    assert q[5].weight.dtype == torch.int8 and q[0].weight.dtype == torch.int8
    with torch.no_grad():
        assert _rel(q[0](_x()), net[0](_x())) < 0.02  # a kept-as-is bias stays in its dtype: compute per layer


def test_scope_limits_the_walk(quant):
    net = torch.nn.Module()
    net.diffusion_model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    net.other = torch.nn.Linear(8, 8)
    q, report = quant.quantize_module(net, "int8", "int8", scope="diffusion_model")
    assert isinstance(q.diffusion_model[0], bnb.nn.Linear8bitLt)
    assert type(q.other) is torch.nn.Linear and q.other is not net.other
    assert report.layers == {"Linear->int8": 1}


def test_tensor_of_supplies_the_values_and_baked_names_are_reported(quant):
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    patched = net[0].weight.detach() + 1.0

    def tensor_of(name, t, for_q):
        return patched if name == "0.weight" else t

    q, report = quant.quantize_module(net, "int8", "none", tensor_of=tensor_of)
    assert report.baked == ["0.weight"]
    assert _rel(q[0].dequantized(torch.float32, torch.device("cpu")), patched) < 0.01


def test_probe_passes_on_cpu_and_names_the_format_when_a_device_cannot_run_it(quant):
    quant.probe("nf4", "int8", "cpu")
    quant.probe("int8", "nf4", "cpu")
    with pytest.raises(quant.QuantizationError, match=r"Linear nf4 does not work on meta.*choose another format \(int8, fp4 or none\)"):
        quant.probe("nf4", "none", "meta")
    # the format that failed is never the one suggested
    with pytest.raises(quant.QuantizationError, match=r"Linear int8 does not work on meta.*choose another format \(nf4, fp4 or none\)"):
        quant.probe("int8", "none", "meta")


def test_a_model_with_hook_or_wrapper_patches_is_refused_naming_the_patched_weights(host, quant):
    quantize = importlib.import_module(f"{host.pack_module.__name__}.nodes.quantize")
    # refused before anything of the patcher is used: only its two patch lists are read
    hooks_only = SimpleNamespace(hook_patches={object(): {"b.weight": [], "a.weight": []}}, weight_wrapper_patches={})
    with pytest.raises(quant.QuantizationError, match=r"hook/weight-wrapper patches \(a\.weight, b\.weight\): connect"):
        quantize.quantize_patcher(hooks_only, "int8", "int8", scope="")
    both = SimpleNamespace(hook_patches={object(): {"a.weight": [], "b.weight": []}},
                           weight_wrapper_patches={"c.weight": [], "d.weight": []})
    with pytest.raises(quant.QuantizationError, match=r"patches \(a\.weight, b\.weight, c\.weight, \.\.\.\): connect"):
        quantize.quantize_patcher(both, "int8", "int8", scope="")


def _table(n: int = 300, d: int = 128, seed: int = 2) -> torch.nn.Embedding:
    emb = torch.nn.Embedding(n, d)
    with torch.no_grad():
        emb.weight.copy_(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 0.02)
    return emb.requires_grad_(False)


@pytest.mark.parametrize(("fmt", "tol", "ratio"), [("int8", 0.01, 0.26), ("nf4", 0.1, 0.15), ("fp4", 0.15, 0.15)])
def test_token_tables_are_quantized_only_when_named_and_look_up_their_rows(fmt, tol, ratio, quant):
    root = torch.nn.Module()
    root.token_embedding = _table()
    root.position_embedding = _table(77, 128, seed=3)  # the host reads this one through .weight
    root.proj = torch.nn.Linear(128, 128)
    q, report = quant.quantize_module(root, fmt, "none", tables=["token_embedding"])
    assert isinstance(q.token_embedding, quant.QuantEmbedding) and q.token_embedding.fmt == fmt
    assert type(q.position_embedding) is torch.nn.Embedding  # not named: kept, and shared
    assert q.position_embedding.weight.data_ptr() == root.position_embedding.weight.data_ptr()
    assert report.layers[f"Embedding->{fmt}"] == 1
    ids = torch.tensor([[0, 5, 299, 5], [17, 1, 2, 3]])
    ref = root.token_embedding(ids)
    out = q.token_embedding(ids, out_dtype=torch.float32)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert _rel(out, ref) < tol
    assert torch.equal(out[0, 1], out[0, 3])  # a row dequantizes the same wherever it is read
    assert q.token_embedding(ids).dtype == torch.float32  # without out_dtype: the table's own dtype
    assert q.token_embedding(ids, out_dtype=torch.float16).dtype == torch.float16
    assert q.token_embedding.embedding_dim == 128
    assert quant.resident_bytes(q.token_embedding) <= ratio * 300 * 128 * 4


def test_4bit_token_table_rows_equal_bitsandbytes_dequantization(quant):
    w = _table().weight.data
    packed, qs = bnb.functional.quantize_4bit(w.contiguous(), blocksize=64, compress_statistics=False, quant_type="nf4")
    want = bnb.functional.dequantize_4bit(packed, qs)
    got = quant.quantized_embedding(w, "nf4")(torch.arange(w.shape[0]))
    assert torch.equal(got, want)  # the same code values and blocks as nf4 Linear layers


def test_bad_token_tables_are_refused_before_any_work(quant):
    root = torch.nn.Module()
    root.token_embedding = _table()
    root.proj = torch.nn.Linear(128, 128)
    with pytest.raises(quant.QuantizationError, match="no token table named nope"):
        quant.quantize_module(root, "int8", "none", tables=["nope"])
    with pytest.raises(quant.QuantizationError, match="not a token table"):
        quant.quantize_module(root, "int8", "none", tables=["proj"])
    odd = torch.nn.Module()
    odd.token_embedding = _table(10, 100)  # 100 is not a multiple of the 4-bit block
    q, report = quant.quantize_module(odd, "nf4", "none", tables=["token_embedding"])
    assert type(q.token_embedding) is torch.nn.Embedding and "4-bit blocks" in report.skipped[0]


def test_the_layers_are_the_host_s_own_layer_classes_with_per_instance_state(quant):
    import comfy.ops

    net = _net()
    root = torch.nn.Module()
    root.net, root.token_embedding = net, _table()
    q, _ = quant.quantize_module(root, "int8", "int8", tables=["token_embedding"])
    lin, conv, emb = q.net[5], q.net[0], q.token_embedding
    assert isinstance(lin, comfy.ops.manual_cast.Linear) and isinstance(lin, bnb.nn.Linear8bitLt)
    assert isinstance(conv, comfy.ops.manual_cast.Conv2d) and isinstance(emb, comfy.ops.manual_cast.Embedding)
    nf4 = quant.quantized_linear(torch.randn(16, 64), None, "nf4")
    assert isinstance(nf4, comfy.ops.manual_cast.Linear) and isinstance(nf4, bnb.nn.Linear4bit)
    assert quant.linear_class("fp4") is type(nf4)  # one 4-bit class for nf4 and fp4
    layers = [lin, q.net[7], conv, q.net[2], emb, nf4]
    for m in layers:
        # the host's flags and patch lists live on each layer, never on a class shared by all
        assert {"comfy_cast_weights", "weight_function", "bias_function"} <= set(vars(m)), type(m)
        assert m.comfy_cast_weights is True
    lists = [m.weight_function for m in layers] + [m.bias_function for m in layers]
    assert len({id(x) for x in lists}) == len(lists)
    assert all(x is not comfy.ops.CastWeightBiasOp.weight_function for x in lists)
    q.net[7].bias_function.append(lambda b: b + 1.0)  # the host puts a bias patch on one layer...
    assert lin.bias_function == [] and comfy.ops.CastWeightBiasOp.bias_function == []  # ...only there
    x = torch.randn(2, 128)
    with torch.no_grad():
        want = torch.nn.functional.linear(x, q.net[7].dequantized(torch.float32, x.device), q.net[7].bias + 1.0)
        assert torch.allclose(q.net[7](x), want)
