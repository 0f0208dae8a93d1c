"""zoodip.quant alone (no host): the quantize/dequantize maths and the copy-on-quantize walk.

The layers built from this maths are the host's own classes (nodes/ops.py); they are tested in the
host, tests/nodes/test_quant_layers.py. Here the walk runs with a small factory of plain layers
that records what it was asked to build.
"""

from __future__ import annotations

import pytest
import torch

from zoodip import quant

bnb = pytest.importorskip("bitsandbytes")
CPU = torch.device("cpu")


def _w(*shape, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.05


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_int8_rows_are_the_llm_int8_format_and_dequantize_close():
    w = _w(64, 128)
    cb, scb = quant.int8_rows(w, CPU)
    assert cb.dtype == torch.int8 and scb.shape == (64,) and scb.dtype == torch.float32
    assert torch.allclose(scb, w.abs().amax(dim=1).half().float(), rtol=1e-3)  # absmax per row, as bitsandbytes
    assert _rel(quant.dequantize_int8_rows(cb, scb, torch.float32, CPU), w) < 0.01
    assert quant.dequantize_int8_rows(cb, scb, torch.float16, CPU).dtype == torch.float16


def test_int8_channels_keep_one_scale_per_output_channel():
    w = _w(8, 4, 3, 3)
    w[3] = 0.0  # an all-zero channel must not divide by zero
    q, scale = quant.int8_channels(w)
    assert q.dtype == torch.int8 and scale.shape == (8,) and int(q.abs().max()) == 127
    back = quant.dequantize_int8_channels(q, scale, torch.float32, CPU)
    assert torch.equal(back[3], torch.zeros_like(back[3]))
    assert _rel(back, w) < 0.01


@pytest.mark.parametrize("fmt, tol", [("nf4", 0.12), ("fp4", 0.2)])
def test_4bit_blocks_round_trip(fmt, tol):
    w = _w(32, 256)
    packed, qs = quant.quantize_4bit(w, fmt, CPU)
    assert packed.numel() * packed.element_size() == w.numel() // 2 and qs.quant_type == fmt
    assert _rel(quant.dequantize_4bit(packed, qs, torch.float32, CPU), w) < tol


@pytest.mark.parametrize("fmt, tol", [("int8", 0.01), ("nf4", 0.12)])
def test_table_rows_dequantize_only_the_rows_read(fmt, tol):
    w = _w(300, 128)
    q, scale, code = quant.quantize_table(w, fmt, CPU, CPU, chunk_rows=64)  # in slices: same result
    q2, scale2, _ = quant.quantize_table(w, fmt, CPU, CPU)
    assert torch.equal(q, q2) and torch.equal(scale, scale2)
    ids = torch.tensor([[0, 5, 299, 5]])
    rows = quant.table_rows(q, scale, code, ids, torch.float32)
    assert rows.shape == (1, 4, 128) and torch.equal(rows[0, 1], rows[0, 3])
    assert _rel(rows[0], w[ids[0]]) < tol
    with pytest.raises(quant.QuantizationError, match="divisible by 64"):
        quant.quantize_table(_w(10, 100), "nf4", CPU, CPU)


def test_4bit_table_rows_equal_bitsandbytes_dequantization():
    w = _w(300, 128)
    packed, qs = bnb.functional.quantize_4bit(w.contiguous(), blocksize=64, compress_statistics=False, quant_type="nf4")
    q, scale, code = quant.quantize_table(w, "nf4", CPU, CPU)
    assert torch.equal(quant.table_rows(q, scale, code, torch.arange(300), torch.float32), bnb.functional.dequantize_4bit(packed, qs))


class Recording:
    """A layer factory for the walk: plain float layers with the dequantized weights, and a log."""

    def __init__(self) -> None:
        self.built: list[tuple[str, str]] = []

    class Layer(torch.nn.Linear):
        pass

    def linear(self, weight, bias, fmt, *, work_device=None, store_device=None):
        self.built.append(("linear", fmt))
        m = self.Layer(weight.shape[1], weight.shape[0], bias=bias is not None)
        m.weight = quant.alias_param(weight)
        m.bias = None if bias is None else quant.alias_param(bias)
        return m

    def conv(self, conv, weight, bias, fmt, *, work_device=None, store_device=None):
        self.built.append(("conv", fmt))
        return torch.nn.Identity()

    def embedding(self, weight, fmt, *, work_device=None, store_device=None):
        self.built.append(("embedding", fmt))
        return torch.nn.Identity()

    def is_quantized(self, m):
        return isinstance(m, self.Layer)


def test_the_walk_plans_everything_before_building_anything():
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Conv2d(4, 4, 3), torch.nn.Conv2d(4, 4, 1),
                              torch.nn.Linear(8, 8))
    float_weight = net[3].weight
    net[3].weight = torch.nn.Parameter(float_weight.detach().to(torch.int8), requires_grad=False)  # cannot be quantized, last
    layers = Recording()
    with pytest.raises(quant.QuantizationError, match=r"layer 3 .*already quantized"):
        quant.quantize_module(net, "int8", "nf4", layers=layers)
    assert layers.built == []  # refused before any work
    net[3].weight = float_weight
    q, report = quant.quantize_module(net, "int8", "nf4", layers=layers)
    # the 1x1 convolution takes the Linear format; the others the conv one
    assert layers.built == [("linear", "int8"), ("conv", "nf4"), ("conv", "int8"), ("linear", "int8")]
    assert report.layers == {"Linear->int8": 2, "Conv2d->nf4": 1, "Conv2d->int8": 1}
    assert q[0].layer_name == "0" and q is not net
    with pytest.raises(quant.QuantizationError, match="already quantized"):
        quant.quantize_module(q, "int8", "none", layers=Recording())


def test_resident_bytes_count_shared_storage_once():
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64))
    q, _ = quant.quantize_module(net, "none", "none", layers=Recording())
    one = quant.resident_bytes(net)
    assert one == sum(p.numel() * 4 for p in net.parameters())
    assert quant.resident_bytes(net, q) == one  # the copy shares every tensor
