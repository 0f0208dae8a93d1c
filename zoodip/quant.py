"""Weight-only quantization maths and the copy-on-quantize tree walk (plain torch + bitsandbytes).

The layers themselves are the host's own layer classes, on the adapter side (``nodes/ops.py``:
subclasses of ``comfy.ops``' Linear, Conv2d and Embedding); this module holds what they compute
with, and ``quantize_module``, which rebuilds a module tree with the layers a ``QuantLayers``
factory makes.

Formats (all weight-only: a stored weight is dequantized to the input's dtype inside forward, one
layer at a time, and activations are never quantized):

- ``int8`` Linear: the LLM.int8 weight format of bitsandbytes (int8 rows + per-row absmax ``SCB``).
  bitsandbytes' own forward would also quantize the activations to int8; a token perturbation of
  1e-3 is far below that rounding step, so the layers keep activations in the compute dtype, as the
  paper's weight-only int8 does.
- ``nf4`` / ``fp4`` Linear: bitsandbytes 4-bit blocks of 64 with double-quantized absmax (QLoRA's).
- ``int8`` Conv2d: int8 weights with one scale per output channel. ``nf4`` Conv2d: the flattened
  weight in bitsandbytes' nf4 blocks. bitsandbytes has no conv layer; these are ours.
- token tables: int8 rows (one scale per row) or 4-bit code values in blocks of 64 along each row,
  so a lookup dequantizes only the rows it reads.

``quantize_module`` walks the tree: every layer under ``scope`` is rebuilt quantized, every other
module is a fresh shallow copy whose parameters are new ``Parameter`` objects over the *same
storage*. Nothing in the input tree is changed or copied in memory; moving the new tree between
devices leaves the input tree where it is.

Plain torch + bitsandbytes (imported lazily); nothing here imports ComfyUI.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import torch

# bitsandbytes' QuantState (bitsandbytes is optional: imported only when a 4-bit format is used)
QuantState = Any

LINEAR_FORMATS = ("int8", "nf4", "fp4", "none")
CONV_FORMATS = ("int8", "nf4", "none")
BLOCKSIZE_4BIT = 64

PATCH_MESSAGE = (
    "a weight patch (e.g. a LoRA) targets the quantized layer {name}: patches cannot be applied to "
    "quantized weights. Connect the LoRA loader before Quantize Model (its patches are then baked into "
    "the quantized weights), or quantize without this layer type"
)


class QuantizationError(ValueError):
    """A model, layer or device that cannot be quantized as asked; the message says what to do."""


def bitsandbytes() -> ModuleType:
    """The bitsandbytes module, or a QuantizationError that says how to install it."""
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional  # noqa: F401
        import bitsandbytes.nn  # noqa: F401
    except Exception as e:  # ImportError, or a broken native library
        raise QuantizationError(
            f"bitsandbytes is not usable here ({type(e).__name__}: {e}): install it in ComfyUI's Python "
            "environment (pip install bitsandbytes), or choose linear=none"
        ) from e
    return bnb


def on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``, moved only when it is elsewhere."""
    return t if t.device == device else t.to(device, non_blocking=True)


# --- int8 ---

def int8_rows(w: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM.int8 weight format: int8 rows and their absmax (SCB), via bitsandbytes."""
    bnb = bitsandbytes()
    cb, scb, _ = bnb.functional.int8_vectorwise_quant(w.to(device=device, dtype=torch.float16).contiguous())
    return cb, scb.float()


def dequantize_int8_rows(cb: torch.Tensor, scb: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    scale = (on(scb, device) * (1.0 / 127.0)).to(dtype)
    return on(cb, device).to(dtype).mul_(scale.unsqueeze(1))


def int8_channels(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values with one scale per output channel (dim 0), from a float32 weight."""
    scale = w.abs().amax(dim=tuple(range(1, w.ndim))) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale.view(-1, *([1] * (w.ndim - 1)))).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8_channels(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    s = on(scale, device).to(dtype)
    return on(q, device).to(dtype).mul_(s.view(-1, *([1] * (q.ndim - 1))))


# --- 4-bit (bitsandbytes blocks) ---

def quantize_4bit(w2d: torch.Tensor, fmt: str, work: torch.device) -> tuple[torch.Tensor, QuantState]:
    """``(packed, quant_state)`` of a 2-D weight in bitsandbytes' 4-bit blocks, computed on ``work``."""
    src = w2d if w2d.dtype in (torch.float32, torch.float16, torch.bfloat16) else w2d.float()
    return bitsandbytes().functional.quantize_4bit(src.to(work).contiguous(), blocksize=BLOCKSIZE_4BIT,
                                                   compress_statistics=True, quant_type=fmt)


def quant_state_on(qs: QuantState, device: torch.device) -> QuantState:
    """The quant state with its tensors on ``device``: itself, or a moved copy (never mutated)."""
    if qs.absmax.device == device:
        return qs
    qs = copy.deepcopy(qs)
    qs.to(device)
    return qs


def dequantize_4bit(packed: torch.Tensor, qs: QuantState, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    bnb = bitsandbytes()
    w = bnb.functional.dequantize_4bit(on(packed, device), quant_state_on(qs, device))
    return w.to(dtype)


def state_dict_4bit(destination: dict, prefix: str, qs, keep_vars: bool) -> None:
    """A 4-bit weight's quant state in a state dict, under the names bitsandbytes uses."""
    for k, v in qs.as_dict(packed=True).items():
        destination[prefix + "weight." + k] = v if keep_vars else v.detach()


# --- token tables ---

def quantize_table(weight: torch.Tensor, fmt: str, work: torch.device, store: torch.device,
                   chunk_rows: int = 8192) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(q, scale, code)`` of an (n, d) table: int8 rows with one scale per row, or 4-bit code
    indices (two per byte) with one scale per block of 64 and the code values (``code``, else None).
    Done in slices of rows, so no full float32 copy of the table is made."""
    n, d = weight.shape
    code = None
    if fmt == "int8":
        q = torch.empty((n, d), dtype=torch.int8, device=store)
        scale = torch.empty(n, dtype=torch.float32, device=store)
    elif fmt in ("nf4", "fp4"):
        if d % BLOCKSIZE_4BIT:
            raise QuantizationError(f"a 4-bit token table needs a width divisible by {BLOCKSIZE_4BIT}, got {d}; choose int8")
        code = bitsandbytes().functional.get_4bit_type(fmt, device="cpu").float()
        order = torch.argsort(code)
        sorted_code = code[order].to(work)
        mids = (sorted_code[1:] + sorted_code[:-1]) / 2  # nearest code value by bucketing
        order = order.to(device=work, dtype=torch.uint8)
        q = torch.empty((n, d // 2), dtype=torch.uint8, device=store)
        scale = torch.empty((n, d // BLOCKSIZE_4BIT), dtype=torch.float32, device=store)
        code = code.to(store)
    else:
        raise QuantizationError(f"unknown Embedding format {fmt!r}: choose one of int8, nf4, fp4")
    for i in range(0, n, chunk_rows):
        w = weight[i:i + chunk_rows].to(device=work, dtype=torch.float32)
        if fmt == "int8":
            s = w.abs().amax(dim=1) / 127.0
            s = torch.where(s > 0, s, torch.ones_like(s))
            q[i:i + chunk_rows] = torch.round(w / s[:, None]).clamp_(-127, 127).to(torch.int8).to(store)
        else:
            blocks = w.view(w.shape[0], -1, BLOCKSIZE_4BIT)
            s = blocks.abs().amax(dim=2)
            s = torch.where(s > 0, s, torch.ones_like(s))
            idx = order[torch.bucketize(blocks / s[..., None], mids)].view(w.shape[0], d)
            q[i:i + chunk_rows] = ((idx[:, 0::2] << 4) | idx[:, 1::2]).to(store)
        scale[i:i + chunk_rows] = s.to(store)
    return q, scale, code


def table_rows(q: torch.Tensor, scale: torch.Tensor, code: torch.Tensor | None, ids: torch.Tensor,
               dtype: torch.dtype) -> torch.Tensor:
    """The dequantized rows ``ids`` (any shape) of a ``quantize_table`` table as ``dtype``, on ids' device."""
    device = ids.device
    at = ids.to(q.device)  # read the rows where the table rests, move only them
    qr = on(q[at], device)
    s = on(scale[at], device)
    if code is None:
        return (qr.to(torch.float32) * s[..., None]).to(dtype)
    idx = torch.stack(((qr >> 4), (qr & 15)), dim=-1).flatten(-2).long()
    vals = on(code, device)[idx].view(*ids.shape, -1, BLOCKSIZE_4BIT) * s[..., None]
    return vals.flatten(-2).to(dtype)


# --- a weight-only op with an input gradient ---

class FrozenWeight(torch.autograd.Function):
    """y = layer.op(x, dequantized W) with a gradient for x only; saves nothing but the layer, and
    dequantizes the weight again in backward (a first-order baseline through a quantized model)."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        ctx.x_shape = x.shape
        with torch.no_grad():
            return layer.op(x, layer.dequantized(x.dtype, x.device))

    @staticmethod
    def backward(ctx, grad):
        layer = ctx.layer
        w = layer.dequantized(grad.dtype, grad.device)
        return layer.input_grad(grad, w, ctx.x_shape), None


def pointwise(m: torch.nn.Conv2d) -> bool:
    """A 1x1 convolution is a Linear layer applied per pixel (SD1.x's proj_in/proj_out are the
    layers SD2.x and SDXL store as Linear): it takes the Linear format."""
    return (tuple(m.kernel_size) == (1, 1) and m.groups == 1 and tuple(m.stride) == (1, 1)
            and tuple(m.dilation) == (1, 1) and not isinstance(m.padding, str) and tuple(m.padding) == (0, 0))


class QuantLayers(Protocol):
    """What builds the quantized layers ``quantize_module`` puts in the new tree (``nodes/ops.py``)."""

    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None, fmt: str, *, work_device=None,
               store_device=None) -> torch.nn.Module: ...

    def conv(self, conv: torch.nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None, fmt: str, *,
             work_device=None, store_device=None) -> torch.nn.Module: ...

    def embedding(self, weight: torch.Tensor, fmt: str, *, work_device=None, store_device=None) -> torch.nn.Module: ...

    def is_quantized(self, m: torch.nn.Module) -> bool: ...


# --- the tree walk ---

@dataclass
class QuantReport:
    """What ``quantize_module`` did: layers per kind and format, and the bytes of their weights."""

    layers: dict[str, int] = field(default_factory=dict)  # e.g. {"Linear->int8": 256}
    skipped: list[str] = field(default_factory=list)  # layers left as they were, with the reason
    bytes_before: int = 0  # float weights of the replaced layers, as stored before
    bytes_after: int = 0  # their quantized weights and scales
    baked: list[str] = field(default_factory=list)  # tensor names whose value came from ``tensor_of(..., True)``

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.layers.items())) or "no layers"
        return f"{kinds}: {self.bytes_before / 2**20:.1f} MiB -> {self.bytes_after / 2**20:.1f} MiB"


TensorOf = Callable[[str, torch.Tensor, bool], torch.Tensor]
OnClone = Callable[[str, torch.nn.Module, torch.nn.Module], None]


def alias_param(p: torch.Tensor) -> torch.nn.Parameter:
    """A new frozen Parameter over the same storage (moving it does not move the original)."""
    return torch.nn.Parameter(p.detach(), requires_grad=False)


def _is_plain(t: torch.Tensor) -> bool:
    return type(t) in (torch.Tensor, torch.nn.Parameter)


def _shallow_clone(module: torch.nn.Module) -> torch.nn.Module:
    new = copy.copy(module)
    d = new.__dict__
    for k, v in list(d.items()):
        if isinstance(v, (dict, list, set)):  # hook dicts, option dicts, host patch lists: not shared
            d[k] = copy.copy(v)
    return new


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or t.device.type == "meta":
            continue
        st = t.untyped_storage()
        key = (st.data_ptr(), t.device)
        if key in seen:
            continue
        seen.add(key)
        total += st.nbytes()
    return total


def quant_state_tensors(qs: QuantState | None) -> list[torch.Tensor]:
    out = []
    while qs is not None:
        out += [t for t in (getattr(qs, "absmax", None), getattr(qs, "code", None), getattr(qs, "offset", None))
                if torch.is_tensor(t)]
        qs = getattr(qs, "state2", None)
    return out


def module_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """Every tensor a module tree keeps resident: parameters, buffers, 4-bit quant states."""
    out = []
    for m in module.modules():
        out += [p for p in m._parameters.values() if p is not None]
        out += [b for b in m._buffers.values() if b is not None]
        qs = m.__dict__.get("quant_state")
        if qs is not None:
            out += quant_state_tensors(qs)
    return out


def resident_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the distinct storages the modules keep (shared storage counted once)."""
    return _tensor_bytes([t for m in modules for t in module_tensors(m)])


def _float_weight(name: str, m: torch.nn.Module, w: torch.Tensor | None) -> None:
    if w is None or not torch.is_tensor(w):
        raise QuantizationError(f"layer {name} ({type(m).__name__}) has no weight tensor to quantize")
    if not _is_plain(w) or not w.dtype.is_floating_point:
        raise QuantizationError(
            f"layer {name} ({type(m).__name__}) stores its weight as {type(w).__name__} of {w.dtype}, not as plain "
            "float values: it is already quantized (another pack's custom operations?). Quantize Model needs a model "
            "loaded with float weights (fp32, fp16, bf16 or fp8)"
        )
    if w.device.type == "meta":
        raise QuantizationError(f"layer {name} has no weight data (meta device): load the model before quantizing it")


def quantize_module(
    root: torch.nn.Module,
    linear: str = "int8",
    conv: str = "int8",
    *,
    layers: QuantLayers,
    scope: str = "",
    tables: Collection[str] = (),
    tensor_of: TensorOf | None = None,
    on_clone: OnClone | None = None,
    work_device=None,
    store_device=None,
) -> tuple[torch.nn.Module, QuantReport]:
    """A new tree: Linear/Conv2d layers under ``scope`` quantized (as ``layers`` builds them), every
    other module shallow-cloned.

    ``scope`` is a dotted module name ("" = the whole tree, "diffusion_model" = that subtree).
    1x1 convolutions take the ``linear`` format (see ``pointwise``). ``tables`` names Embedding
    modules (token tables) to store in the ``linear`` format too.
    ``tensor_of(name, tensor, for_quantization)`` supplies the value to use for each parameter
    (``name`` relative to ``root``): the host can hand back unpatched or patched weights; default is
    the tensor as it is. ``on_clone(name, original, new)`` is called for every new module, so a host
    can reset its own bookkeeping attributes on the copies. Quantization runs on ``work_device`` and
    the quantized tensors are stored on ``store_device`` (default: where each weight is).
    Raises QuantizationError before building anything it cannot finish.
    """
    if linear not in LINEAR_FORMATS:
        raise QuantizationError(f"linear must be one of {LINEAR_FORMATS}, got {linear!r}")
    if conv not in CONV_FORMATS:
        raise QuantizationError(f"conv must be one of {CONV_FORMATS}, got {conv!r}")
    if linear != "none" or conv == "nf4":
        bitsandbytes()
    tensor_of = tensor_of or (lambda name, t, q: t)
    report = QuantReport()

    def in_scope(name: str) -> bool:
        return not scope or name == scope or name.startswith(scope + ".")

    def target(name: str, m: torch.nn.Module) -> str | None:
        if not in_scope(name):
            return None
        if layers.is_quantized(m):
            raise QuantizationError(f"layer {name} is already quantized: connect the model from before Quantize Model")
        if name in tables:
            if not isinstance(m, torch.nn.Embedding):
                raise QuantizationError(f"{name} is a {type(m).__name__}, not a token table (Embedding)")
            if linear == "none":
                return None
            _float_weight(name, m, m.weight)
            if linear != "int8" and m.embedding_dim % BLOCKSIZE_4BIT:
                report.skipped.append(f"{name}: width {m.embedding_dim} does not fit 4-bit blocks, kept as it was")
                return None
            return linear
        if isinstance(m, torch.nn.Linear) and linear != "none":
            _float_weight(name, m, m.weight)
            return linear
        if isinstance(m, torch.nn.Conv2d) and linear != "none" and pointwise(m):
            _float_weight(name, m, m.weight)
            return linear
        if isinstance(m, torch.nn.Conv2d) and conv != "none":
            _float_weight(name, m, m.weight)
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                report.skipped.append(f"{name}: padding {m.padding!r}/{m.padding_mode} is not supported, kept as it was")
                return None
            return conv
        return None

    # plan every layer first: anything that cannot be done fails before any quantization work
    plan = {id(m): target(name, m) for name, m in root.named_modules()}
    missing = set(tables) - {name for name, _ in root.named_modules()}
    if missing:
        raise QuantizationError(f"no token table named {', '.join(sorted(missing))} in this model")
    memo: dict[int, torch.nn.Module] = {}

    def value(name: str, t: torch.Tensor | None, for_q: bool) -> torch.Tensor | None:
        if t is None:
            return None
        v = tensor_of(name, t, for_q)
        if for_q and v is not t:
            report.baked.append(name)
        return v

    def visit(module: torch.nn.Module, name: str) -> torch.nn.Module:
        if id(module) in memo:
            return memo[id(module)]
        fmt = plan.get(id(module))
        p = f"{name}." if name else ""
        if fmt is not None:
            w = value(p + "weight", module.weight, True)
            b = value(p + "bias", getattr(module, "bias", None), True)
            if isinstance(module, torch.nn.Linear):
                new = layers.linear(w, b, fmt, work_device=work_device, store_device=store_device)
                kind = "Linear"
            elif isinstance(module, torch.nn.Embedding):
                new = layers.embedding(w, fmt, work_device=work_device, store_device=store_device)
                kind = "Embedding"
            else:
                new = layers.conv(module, w, b, fmt, work_device=work_device, store_device=store_device)
                kind = "Conv2d"
            new.layer_name = name
            report.layers[f"{kind}->{fmt}"] = report.layers.get(f"{kind}->{fmt}", 0) + 1
            report.bytes_before += _tensor_bytes([module.weight])
            report.bytes_after += _tensor_bytes([t for t in module_tensors(new) if t is not new.bias])
        else:
            new = _shallow_clone(module)
            params = {}
            for k, t in module._parameters.items():
                if t is None or not _is_plain(t):
                    params[k] = t  # a tensor subclass (another pack's format): shared as it is
                else:
                    params[k] = alias_param(value(p + k, t, False))
            new._parameters = params
            new._buffers = dict(module._buffers)
            new._modules = {k: (None if c is None else visit(c, p + k)) for k, c in module._modules.items()}
        memo[id(module)] = new
        if on_clone is not None:
            on_clone(name, module, new)
        return new

    new_root = visit(root, "")
    for m in memo.values():  # plain attributes that point at modules of the old tree
        for k, v in list(m.__dict__.items()):
            if isinstance(v, torch.nn.Module) and id(v) in memo:
                m.__dict__[k] = memo[id(v)]
    return new_root, report
