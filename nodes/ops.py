"""Quantized layers that are the host's own layer classes: subclasses of ``comfy.ops.manual_cast``'s
Linear, Conv2d and Embedding (as ComfyUI-GGUF's layers are), so the host's loader treats them as
layers that cast their weights themselves.

Each layer keeps its quantized weight and dequantizes it inside forward, one layer at a time,
into the input's dtype and device (the maths is the engine's ``zoodip.quant``). With the host's
``comfy_cast_weights`` on, its partial ("low VRAM") loading may leave the weight on the offload
device: forward moves what it reads. ``bias_function`` patches apply to the float bias as in the
host's ``cast_bias_weight``; a weight patch cannot apply to a quantized weight, so the layer refuses
it where the host's loader looks first (``convert_weight``, ``set_weight``) and in forward
(``weight_function``). All of it is per-instance state: the host's class-level ``weight_function``
and ``bias_function`` lists are shadowed by each layer's own.

Linear layers are bitsandbytes' ``Linear8bitLt`` (``has_fp16_weights=False``: LLM.int8 rows and
their absmax ``SCB``) and ``Linear4bit`` (nf4/fp4) too, so their weights and state dicts are in
bitsandbytes' formats; their classes are built when first needed (bitsandbytes is optional).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection

import comfy.ops
import torch
import torch.nn.functional as F

from ..zoodip import quant
from ..zoodip.quant import CONV_FORMATS, LINEAR_FORMATS, PATCH_MESSAGE, QuantizationError

__all__ = ["LINEAR_FORMATS", "CONV_FORMATS", "QuantizationError", "QuantConv2d", "QuantEmbedding", "linear_class",
           "quantized_linear", "quantized_conv", "quantized_embedding", "is_quantized_layer", "quantize_module", "probe"]


class QuantLayer:
    """What a quantized layer adds to the host layer class it extends."""

    def _init_host_state(self, fmt: str) -> None:
        self.fmt = fmt
        self.layer_name = "?"  # the walk names it, for messages
        self.comfy_cast_weights = True  # the host's flag: forward casts (here: dequantizes) the weight itself
        self.weight_function: list = []  # the host's per-layer patch lists, this layer's own
        self.bias_function: list = []

    def forward(self, *args, **kwargs):
        # the host's forward takes the plain path when comfy_cast_weights is off; a quantized weight never can
        return self.forward_comfy_cast_weights(*args, **kwargs)

    def _refuse_patches(self) -> None:
        if self.weight_function:
            raise RuntimeError(PATCH_MESSAGE.format(name=self.layer_name))

    def set_weight(self, *args, **kwargs):
        raise RuntimeError(PATCH_MESSAGE.format(name=self.layer_name))

    @property
    def convert_weight(self):
        # the host's patch loader looks this up first, before it touches the weight: refuse right there
        raise RuntimeError(PATCH_MESSAGE.format(name=self.layer_name))

    def _bias_for(self, x: torch.Tensor) -> torch.Tensor | None:
        b = self.bias
        if b is None:
            return None
        for f in self.bias_function:  # a float bias can take patches like any other
            b = f(b)
        return quant.on(b, x.device).to(x.dtype)


class WeightOnly(QuantLayer):
    """Forward of a quantized Linear/Conv2d: dequantize this layer's weight for the input, run the float op."""

    bias_dims = 0

    def forward_comfy_cast_weights(self, x: torch.Tensor) -> torch.Tensor:
        self._refuse_patches()
        if torch.is_grad_enabled() and x.requires_grad:
            y = quant.FrozenWeight.apply(x, self)
        else:
            y = self.op(x, self.dequantized(x.dtype, x.device))
        b = self._bias_for(x)
        if b is not None:
            y = y + b.view(-1, *([1] * self.bias_dims))
        return y


class LinearOp(WeightOnly):
    """The op of a quantized Linear layer: y = x W^T, and its input gradient."""

    @staticmethod
    def op(x, w):
        return F.linear(x, w)

    @staticmethod
    def input_grad(grad, w, x_shape):
        return grad @ w


# --- Linear: bitsandbytes' layers, as host layers ---

def linear_class(fmt: str) -> type:
    """The Linear class for ``fmt``: int8 (``Linear8bitLt``) or nf4/fp4 (one ``Linear4bit`` class)."""
    if fmt not in ("int8", "nf4", "fp4"):
        raise QuantizationError(f"unknown Linear format {fmt!r}: choose one of {LINEAR_FORMATS}")
    return _linear_class("int8" if fmt == "int8" else "4bit")


@functools.cache
def _linear_class(kind: str) -> type:
    bnb = quant.bitsandbytes()
    if kind == "int8":

        class Int8Linear(LinearOp, comfy.ops.manual_cast.Linear, bnb.nn.Linear8bitLt):
            """bitsandbytes ``Linear8bitLt(has_fp16_weights=False)`` with a weight-only forward.

            The int8 rows are the ``weight`` (an ``Int8Params``); their absmax is the ``SCB`` buffer,
            so it follows the module through ``.to()`` and appears in ``state_dict()`` under the name
            bitsandbytes uses.
            """

            def dequantized(self, dtype, device) -> torch.Tensor:
                return quant.dequantize_int8_rows(self.weight.data, self.SCB, dtype, device)

            def _save_to_state_dict(self, destination, prefix, keep_vars):
                torch.nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)
                destination[prefix + "weight_format"] = torch.tensor(0, dtype=torch.uint8)

            def _apply(self, fn, recurse=True):
                super()._apply(fn, recurse)
                self.state.CB = self.state.SCB = None  # bitsandbytes' matmul state: unused here, never stale
                return self

        return Int8Linear

    class Linear4bit(LinearOp, comfy.ops.manual_cast.Linear, bnb.nn.Linear4bit):
        """bitsandbytes ``Linear4bit`` (nf4 or fp4), dequantized per call into the input's dtype."""

        def dequantized(self, dtype, device) -> torch.Tensor:
            return quant.dequantize_4bit(self.weight.data, self.quant_state, dtype, device)

        def _save_to_state_dict(self, destination, prefix, keep_vars):
            torch.nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)
            quant.state_dict_4bit(destination, prefix, self.quant_state, keep_vars)

        def _apply(self, fn, recurse=True):
            super()._apply(fn, recurse)
            self.quant_state.to(self.weight.device)  # a Python object: torch does not move it
            self.weight.quant_state = self.quant_state
            return self

    return Linear4bit


def _devices(weight: torch.Tensor, work_device, store_device) -> tuple[torch.device, torch.device]:
    work = torch.device(work_device) if work_device is not None else weight.device
    store = torch.device(store_device) if store_device is not None else weight.device
    return work, store


def quantized_linear(weight: torch.Tensor, bias: torch.Tensor | None, fmt: str, *,
                     work_device=None, store_device=None) -> torch.nn.Module:
    """A Linear layer holding ``weight`` (out, in) in ``fmt``; ``bias`` is kept as given (shared)."""
    bnb = quant.bitsandbytes()
    work, store = _devices(weight, work_device, store_device)
    out_f, in_f = weight.shape
    cls = linear_class(fmt)
    if fmt == "int8":
        m = cls(in_f, out_f, bias=bias is not None, has_fp16_weights=False, device="meta")
        cb, scb = quant.int8_rows(weight, work)
        m.weight = bnb.nn.Int8Params(cb.to(store), requires_grad=False, has_fp16_weights=False)
        m.register_buffer("SCB", scb.to(store))
    else:
        m = cls(in_f, out_f, bias=bias is not None, quant_type=fmt, device="meta")
        src = weight if weight.dtype in (torch.float32, torch.float16, torch.bfloat16) else weight.float()
        p = bnb.nn.Params4bit(src.to(work).contiguous(), requires_grad=False, quant_type=fmt,
                              blocksize=quant.BLOCKSIZE_4BIT, compress_statistics=True)
        p = p.to(work)  # bitsandbytes quantizes on the move to a device
        if store != work:
            p = p.to(store)
        m.weight = p
        m.quant_state = p.quant_state
        m.compute_type_is_set = True  # bitsandbytes' own forward is not used
    m._init_host_state(fmt)
    m.bias = None if bias is None else quant.alias_param(bias)
    return m


# --- Conv2d ---

class QuantConv2d(WeightOnly, comfy.ops.manual_cast.Conv2d):
    """A 2-D convolution whose weight is stored as int8 (per output channel) or nf4 blocks."""

    bias_dims = 2

    def __init__(self, conv: torch.nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None, fmt: str,
                 work: torch.device, store: torch.device) -> None:
        torch.nn.Module.__init__(self)  # no float weight is ever allocated
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                     "padding_mode", "transposed", "output_padding"):
            setattr(self, attr, getattr(conv, attr))
        self._init_host_state(fmt)
        self.weight_shape = tuple(weight.shape)
        if fmt == "int8":
            q, scale = quant.int8_channels(weight.to(device=work, dtype=torch.float32))
            self.weight = torch.nn.Parameter(q.to(store), requires_grad=False)
            self.register_buffer("scale", scale.to(store))
            self.quant_state = None
        elif fmt in ("nf4", "fp4"):  # fp4 only for 1x1 convolutions that follow an fp4 Linear format
            packed, qs = quant.quantize_4bit(weight.reshape(weight.shape[0], -1), fmt, work)
            qs.to(store)
            self.weight = torch.nn.Parameter(packed.to(store), requires_grad=False)
            self.quant_state = qs
        else:
            raise QuantizationError(f"unknown Conv2d format {fmt!r}: choose one of {CONV_FORMATS}")
        self.bias = None if bias is None else quant.alias_param(bias)

    def dequantized(self, dtype, device) -> torch.Tensor:
        if self.fmt == "int8":
            return quant.dequantize_int8_channels(self.weight, self.scale, dtype, device)
        return quant.dequantize_4bit(self.weight, self.quant_state, dtype, device).reshape(self.weight_shape)

    def op(self, x, w):
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def input_grad(self, grad, w, x_shape):
        return torch.nn.grad.conv2d_input(x_shape, w, grad, self.stride, self.padding, self.dilation, self.groups)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        torch.nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)
        if self.quant_state is not None:
            quant.state_dict_4bit(destination, prefix, self.quant_state, keep_vars)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.quant_state is not None:
            self.quant_state.to(self.weight.device)
        return self

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, format={self.fmt}")


def quantized_conv(conv: torch.nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None, fmt: str, *,
                   work_device=None, store_device=None) -> QuantConv2d:
    return QuantConv2d(conv, weight, bias, fmt, *_devices(weight, work_device, store_device))


# --- Embedding (a text encoder's token table) ---

class QuantEmbedding(QuantLayer, comfy.ops.manual_cast.Embedding):
    """A token table stored as int8 rows or 4-bit blocks (``quant.quantize_table``); a lookup
    dequantizes only the rows it reads.

    Called as the host calls its token table, ``emb(ids, out_dtype=None)``. Only tables the caller
    names are quantized: a position table is read through ``.weight`` by the host, not looked up.
    """

    def __init__(self, weight: torch.Tensor, fmt: str, work: torch.device, store: torch.device) -> None:
        torch.nn.Module.__init__(self)  # no float table is ever allocated
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx, self.max_norm, self.norm_type = None, None, 2.0
        self.scale_grad_by_freq, self.sparse = False, False
        self._init_host_state(fmt)
        self.compute_dtype = weight.dtype if weight.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32
        q, scale, code = quant.quantize_table(weight, fmt, work, store)
        if code is not None:
            self.register_buffer("code", code)
        self.weight = torch.nn.Parameter(q, requires_grad=False)
        self.register_buffer("scale", scale)
        self.bias = None

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The dequantized rows ``ids`` (any shape) as ``dtype``, on ids' device."""
        return quant.table_rows(self.weight, self.scale, getattr(self, "code", None), ids, dtype)

    def forward_comfy_cast_weights(self, ids: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        self._refuse_patches()
        return self.rows(ids, out_dtype or self.compute_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, format={self.fmt}"


def quantized_embedding(weight: torch.Tensor, fmt: str, *, work_device=None, store_device=None) -> QuantEmbedding:
    return QuantEmbedding(weight, fmt, *_devices(weight, work_device, store_device))


def is_quantized_layer(m: torch.nn.Module) -> bool:
    return isinstance(m, QuantLayer)


class HostLayers:
    """The factory ``quant.quantize_module`` builds its layers with: these classes."""

    linear = staticmethod(quantized_linear)
    conv = staticmethod(quantized_conv)
    embedding = staticmethod(quantized_embedding)
    is_quantized = staticmethod(is_quantized_layer)


def quantize_module(root: torch.nn.Module, linear: str = "int8", conv: str = "int8", *, scope: str = "",
                    tables: Collection[str] = (), **kwargs) -> tuple[torch.nn.Module, quant.QuantReport]:
    """``quant.quantize_module`` with these layers (see there)."""
    return quant.quantize_module(root, linear, conv, layers=HostLayers, scope=scope, tables=tables, **kwargs)


def _others(what: str, linear: str, conv: str) -> str:
    """The formats to suggest instead of the one that failed (``what`` is "Linear <fmt>" or "Conv2d <fmt>")."""
    formats, failed = (LINEAR_FORMATS, linear) if what.startswith("Linear") else (CONV_FORMATS, conv)
    others = [f for f in formats if f != failed]
    return ", ".join(others[:-1]) + f" or {others[-1]}" if len(others) > 1 else others[0]


def probe(linear: str, conv: str, device: torch.device | str) -> None:
    """Quantize and run a small layer of each format on ``device``; QuantizationError if it cannot work."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(128, 64)
    cnv = torch.nn.Conv2d(8, 8, 3, padding=1)
    with torch.no_grad():
        for t in (lin.weight, lin.bias, cnv.weight, cnv.bias):
            t.copy_(torch.randn(t.shape, generator=g) * 0.05)
    checks = []
    if linear != "none":
        checks.append((f"Linear {linear}", lambda: quantized_linear(lin.weight.to(device), lin.bias.to(device), linear),
                       torch.randn(2, 128, generator=g), lin))
    if conv != "none":
        checks.append((f"Conv2d {conv}", lambda: quantized_conv(cnv, cnv.weight.to(device), cnv.bias.to(device), conv),
                       torch.randn(1, 8, 6, 6, generator=g), cnv))
    for what, build, x, ref in checks:
        try:
            with torch.no_grad():
                layer = build()
                y = layer(x.to(device)).float().cpu()
                want = ref(x)
        except QuantizationError:
            raise
        except Exception as e:
            raise QuantizationError(
                f"{what} does not work on {device} with this bitsandbytes ({type(e).__name__}: {e}); "
                f"choose another format ({_others(what, linear, conv)}), or run on a device bitsandbytes supports"
            ) from e
        err = float((y - want).norm() / want.norm().clamp_min(1e-12))
        if not math.isfinite(err) or err > 0.5:
            raise QuantizationError(f"{what} gives wrong results on {device} (relative error {err:.2f}); choose another format")
