"""Weight-only quantization of a frozen model: bitsandbytes Linear layers and int8 / nf4 convolutions.

``quantize_module(root, linear, conv)`` returns a *new* module tree: every ``nn.Linear`` (and
``nn.Conv2d``) under ``scope`` is rebuilt as a quantized layer, every other module is a fresh
shallow copy whose parameters are new ``Parameter`` objects over the *same storage*. Nothing in
the input tree is changed or copied in memory; moving the new tree between devices leaves the
input tree where it is.

Layers (all weight-only: the stored weight is dequantized to the input's dtype inside forward, one
layer at a time, and activations are never quantized):

- ``int8`` Linear: ``bitsandbytes.nn.Linear8bitLt(has_fp16_weights=False)`` holding the LLM.int8
  format (int8 rows + per-row absmax ``SCB``). bitsandbytes' own forward would also quantize the
  activations to int8; a token perturbation of 1e-3 is far below that rounding step, so the
  forward here keeps activations in the compute dtype, as the paper's weight-only int8 does.
- ``nf4`` / ``fp4`` Linear: ``bitsandbytes.nn.Linear4bit`` (blocks of 64, double-quantized
  absmax, as QLoRA).
- ``int8`` Conv2d: int8 weights with one scale per output channel. ``nf4`` Conv2d: the flattened
  weight in bitsandbytes' nf4 blocks. bitsandbytes has no conv layer; these are ours.

Every layer can be moved with ``.to()``/``.cpu()`` and also runs when its weights sit on another
device than its input (they are moved per call), which is what a host's partial ("low VRAM")
loading needs. With grad enabled for the input (a first-order baseline), a custom autograd
function keeps only the quantized weight for backward and dequantizes it again there.

Plain torch + bitsandbytes (imported lazily); nothing here imports ComfyUI.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

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


def bitsandbytes():
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


def _on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t if t.device == device else t.to(device, non_blocking=True)


class _HostProtocol:
    """Duck-typed attributes a host's model loader looks for on a layer.

    ``comfy_cast_weights`` marks the layer as able to run with its weights on another device
    (ComfyUI's partial loading sets it and leaves the weights where they are; the forward here
    always handles that case). ``weight_function``/``bias_function`` are where such a loader
    puts on-the-fly weight patches: a quantized weight cannot take them, so forward refuses.
    ``convert_weight``/``set_weight`` are what a loader looks up to read and write back a patched
    weight: both refuse the same way, before anything is changed.
    """

    comfy_cast_weights = False
    weight_function: list = []
    bias_function: list = []
    layer_name = "?"

    def _refuse_patches(self) -> None:
        if self.weight_function:
            raise RuntimeError(PATCH_MESSAGE.format(name=self.layer_name))

    def set_weight(self, *args, **kwargs):
        raise RuntimeError(PATCH_MESSAGE.format(name=self.layer_name))

    @property
    def convert_weight(self):
        # a host's patch loader looks this up first, before it touches the weight: refuse right there
        raise RuntimeError(PATCH_MESSAGE.format(name=self.layer_name))

    def _bias_for(self, x: torch.Tensor) -> torch.Tensor | None:
        b = self.bias
        if b is None:
            return None
        for f in self.bias_function:  # a float bias can take patches like any other
            b = f(b)
        return _on(b, x.device).to(x.dtype)


class _FrozenWeight(torch.autograd.Function):
    """y = op(x, dequantized W) with a gradient for x only; saves nothing but the layer."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        ctx.x_shape = x.shape
        with torch.no_grad():
            return layer._op(x, layer.dequantized(x.dtype, x.device))

    @staticmethod
    def backward(ctx, grad):
        layer = ctx.layer
        w = layer.dequantized(grad.dtype, grad.device)
        return layer._input_grad(grad, w, ctx.x_shape), None


class _WeightOnly(_HostProtocol):
    """Shared forward: dequantize this layer's weight for the input, run the float op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._refuse_patches()
        if torch.is_grad_enabled() and x.requires_grad:
            y = _FrozenWeight.apply(x, self)
        else:
            y = self._op(x, self.dequantized(x.dtype, x.device))
        b = self._bias_for(x)
        if b is not None:
            y = y + b.view(-1, *([1] * self._bias_dims))
        return y


class _LinearOp(_WeightOnly):
    """The op of a quantized Linear layer: y = x W^T, and its input gradient."""

    _bias_dims = 0

    @staticmethod
    def _op(x, w):
        return F.linear(x, w)

    @staticmethod
    def _input_grad(grad, w, x_shape):
        return grad @ w


# --- 4-bit helpers (bitsandbytes blocks) ---

def _quant_state_on(qs, device: torch.device):
    """The quant state with its tensors on ``device``: itself, or a moved copy (never mutated)."""
    if qs.absmax.device == device:
        return qs
    qs = copy.deepcopy(qs)
    qs.to(device)
    return qs


def _dequantize_4bit(packed: torch.Tensor, qs, dtype, device) -> torch.Tensor:
    bnb = bitsandbytes()
    w = bnb.functional.dequantize_4bit(_on(packed, device), _quant_state_on(qs, device))
    return w.to(dtype)


def _state_dict_4bit(destination: dict, prefix: str, qs, keep_vars: bool) -> None:
    for k, v in qs.as_dict(packed=True).items():
        destination[prefix + "weight." + k] = v if keep_vars else v.detach()


# --- Linear ---

def _int8_rows(w: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM.int8 weight format: int8 rows and their absmax (SCB), via bitsandbytes."""
    bnb = bitsandbytes()
    cb, scb, _ = bnb.functional.int8_vectorwise_quant(w.to(device=device, dtype=torch.float16).contiguous())
    return cb, scb.float()


def _make_int8_linear():
    bnb = bitsandbytes()

    class Int8Linear(_LinearOp, bnb.nn.Linear8bitLt):
        """bitsandbytes ``Linear8bitLt(has_fp16_weights=False)`` with a weight-only forward.

        The int8 rows are the ``weight`` (an ``Int8Params``); their absmax is the ``SCB`` buffer,
        so it follows the module through ``.to()`` and appears in ``state_dict()`` under the name
        bitsandbytes uses.
        """

        def dequantized(self, dtype, device) -> torch.Tensor:
            scale = (_on(self.SCB, device) * (1.0 / 127.0)).to(dtype)
            return _on(self.weight.data, device).to(dtype).mul_(scale.unsqueeze(1))

        def _save_to_state_dict(self, destination, prefix, keep_vars):
            torch.nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)
            destination[prefix + "weight_format"] = torch.tensor(0, dtype=torch.uint8)

        def _apply(self, fn, recurse=True):
            super()._apply(fn, recurse)
            self.state.CB = self.state.SCB = None  # bitsandbytes' matmul state: unused here, never stale
            return self

        forward = _WeightOnly.forward

    return Int8Linear


def _make_linear_4bit():
    bnb = bitsandbytes()

    class Linear4bit(_LinearOp, bnb.nn.Linear4bit):
        """bitsandbytes ``Linear4bit`` (nf4 or fp4), dequantized per call into the input's dtype."""

        def dequantized(self, dtype, device) -> torch.Tensor:
            return _dequantize_4bit(self.weight.data, self.quant_state, dtype, device)

        def _save_to_state_dict(self, destination, prefix, keep_vars):
            torch.nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)
            _state_dict_4bit(destination, prefix, self.quant_state, keep_vars)

        def _apply(self, fn, recurse=True):
            super()._apply(fn, recurse)
            self.quant_state.to(self.weight.device)  # a Python object: torch does not move it
            self.weight.quant_state = self.quant_state
            return self

        forward = _WeightOnly.forward

    return Linear4bit


_CLASSES: dict[str, type] = {}


def _cls(name: str) -> type:
    if name not in _CLASSES:
        _CLASSES[name] = {"int8_linear": _make_int8_linear, "linear_4bit": _make_linear_4bit}[name]()
    return _CLASSES[name]


def quantized_linear(weight: torch.Tensor, bias: torch.Tensor | None, fmt: str, *,
                     work_device=None, store_device=None) -> torch.nn.Module:
    """A bitsandbytes layer holding ``weight`` (out, in) in ``fmt``; ``bias`` is kept as given (shared)."""
    bnb = bitsandbytes()
    work = torch.device(work_device) if work_device is not None else weight.device
    store = torch.device(store_device) if store_device is not None else weight.device
    out_f, in_f = weight.shape
    if fmt == "int8":
        m = _cls("int8_linear")(in_f, out_f, bias=bias is not None, has_fp16_weights=False, device="meta")
        cb, scb = _int8_rows(weight, work)
        m.weight = bnb.nn.Int8Params(cb.to(store), requires_grad=False, has_fp16_weights=False)
        m.register_buffer("SCB", scb.to(store))
    elif fmt in ("nf4", "fp4"):
        m = _cls("linear_4bit")(in_f, out_f, bias=bias is not None, quant_type=fmt, device="meta")
        src = weight if weight.dtype in (torch.float32, torch.float16, torch.bfloat16) else weight.float()
        p = bnb.nn.Params4bit(src.to(work).contiguous(), requires_grad=False, quant_type=fmt,
                              blocksize=BLOCKSIZE_4BIT, compress_statistics=True)
        p = p.to(work)  # bitsandbytes quantizes on the move to a device
        if store != work:
            p = p.to(store)
        m.weight = p
        m.quant_state = p.quant_state
        m.compute_type_is_set = True  # bitsandbytes' own forward is not used
    else:
        raise QuantizationError(f"unknown Linear format {fmt!r}: choose one of {LINEAR_FORMATS}")
    m.bias = None if bias is None else _alias_param(bias)
    return m


# --- Conv2d ---

class QuantConv2d(_WeightOnly, torch.nn.Module):
    """A 2-D convolution whose weight is stored as int8 (per output channel) or nf4 blocks."""

    _bias_dims = 2

    def __init__(self, conv: torch.nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None, fmt: str,
                 work: torch.device, store: torch.device) -> None:
        super().__init__()
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
            setattr(self, attr, getattr(conv, attr))
        self.fmt = fmt
        self.weight_shape = tuple(weight.shape)
        w = weight.to(device=work, dtype=torch.float32)
        if fmt == "int8":
            scale = w.abs().amax(dim=tuple(range(1, w.ndim))) / 127.0
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            q = torch.round(w / scale.view(-1, *([1] * (w.ndim - 1)))).clamp_(-127, 127).to(torch.int8)
            self.weight = torch.nn.Parameter(q.to(store), requires_grad=False)
            self.register_buffer("scale", scale.to(store))
            self.quant_state = None
        elif fmt in ("nf4", "fp4"):  # fp4 only for 1x1 convolutions that follow an fp4 Linear format
            bnb = bitsandbytes()
            src = weight if weight.dtype in (torch.float32, torch.float16, torch.bfloat16) else w
            packed, qs = bnb.functional.quantize_4bit(
                src.to(work).reshape(w.shape[0], -1).contiguous(), blocksize=BLOCKSIZE_4BIT,
                compress_statistics=True, quant_type=fmt,
            )
            qs.to(store)
            self.weight = torch.nn.Parameter(packed.to(store), requires_grad=False)
            self.quant_state = qs
        else:
            raise QuantizationError(f"unknown Conv2d format {fmt!r}: choose one of {CONV_FORMATS}")
        del w
        self.bias = None if bias is None else _alias_param(bias)

    def dequantized(self, dtype, device) -> torch.Tensor:
        if self.fmt == "int8":
            scale = _on(self.scale, device).to(dtype)
            return _on(self.weight, device).to(dtype).mul_(scale.view(-1, 1, 1, 1))
        return _dequantize_4bit(self.weight, self.quant_state, dtype, device).reshape(self.weight_shape)

    def _op(self, x, w):
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def _input_grad(self, grad, w, x_shape):
        return torch.nn.grad.conv2d_input(x_shape, w, grad, self.stride, self.padding, self.dilation, self.groups)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.quant_state is not None:
            _state_dict_4bit(destination, prefix, self.quant_state, keep_vars)

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
    work = torch.device(work_device) if work_device is not None else weight.device
    store = torch.device(store_device) if store_device is not None else weight.device
    return QuantConv2d(conv, weight, bias, fmt, work, store)


# --- Embedding (a text encoder's token table) ---

class QuantEmbedding(_HostProtocol, torch.nn.Module):
    """A token table stored as int8 rows (one scale per row) or 4-bit blocks (bitsandbytes' nf4/fp4
    code values, blocks of 64 along each row); a lookup dequantizes only the rows it reads.

    Called as the host calls its token table, ``emb(ids, out_dtype=None)``. Only tables the caller
    names are quantized: a position table is read through ``.weight`` by the host, not looked up.
    """

    def __init__(self, weight: torch.Tensor, fmt: str, work: torch.device, store: torch.device, chunk_rows: int = 8192) -> None:
        super().__init__()
        n, d = weight.shape
        self.num_embeddings, self.embedding_dim = n, d
        self.padding_idx = None
        self.fmt = fmt
        self.compute_dtype = weight.dtype if weight.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32
        if fmt == "int8":
            q = torch.empty((n, d), dtype=torch.int8, device=store)
            scale = torch.empty(n, dtype=torch.float32, device=store)
        elif fmt in ("nf4", "fp4"):
            if d % BLOCKSIZE_4BIT:
                raise QuantizationError(f"a 4-bit token table needs a width divisible by {BLOCKSIZE_4BIT}, got {d}; choose int8")
            code = bitsandbytes().functional.get_4bit_type(fmt, device="cpu").float()
            order = torch.argsort(code)
            self.register_buffer("code", code.to(store))
            sorted_code = code[order].to(work)
            mids = (sorted_code[1:] + sorted_code[:-1]) / 2  # nearest code value by bucketing
            order = order.to(device=work, dtype=torch.uint8)
            q = torch.empty((n, d // 2), dtype=torch.uint8, device=store)
            scale = torch.empty((n, d // BLOCKSIZE_4BIT), dtype=torch.float32, device=store)
        else:
            raise QuantizationError(f"unknown Embedding format {fmt!r}: choose one of int8, nf4, fp4")
        for i in range(0, n, chunk_rows):  # in slices: no full fp32 copy of the table
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
        self.weight = torch.nn.Parameter(q, requires_grad=False)
        self.register_buffer("scale", scale)
        self.bias = None

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The dequantized rows ``ids`` (any shape) as ``dtype``, on ids' device."""
        device = ids.device
        at = ids.to(self.weight.device)  # read the rows where the table rests, move only them
        q = _on(self.weight[at], device)
        s = _on(self.scale[at], device)
        if self.fmt == "int8":
            return (q.to(torch.float32) * s[..., None]).to(dtype)
        code = _on(self.code, device)
        idx = torch.stack(((q >> 4), (q & 15)), dim=-1).flatten(-2).long()
        vals = code[idx].view(*ids.shape, -1, BLOCKSIZE_4BIT) * s[..., None]
        return vals.flatten(-2).to(dtype)

    def forward(self, ids: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        self._refuse_patches()
        return self.rows(ids, out_dtype or self.compute_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, format={self.fmt}"


def quantized_embedding(weight: torch.Tensor, fmt: str, *, work_device=None, store_device=None) -> QuantEmbedding:
    work = torch.device(work_device) if work_device is not None else weight.device
    store = torch.device(store_device) if store_device is not None else weight.device
    return QuantEmbedding(weight, fmt, work, store)


def is_quantized_layer(m: torch.nn.Module) -> bool:
    return isinstance(m, (_WeightOnly, QuantEmbedding))


def _pointwise(m: torch.nn.Conv2d) -> bool:
    """A 1x1 convolution is a Linear layer applied per pixel (SD1.x's proj_in/proj_out are the
    layers SD2.x and SDXL store as Linear): it takes the Linear format."""
    return (tuple(m.kernel_size) == (1, 1) and m.groups == 1 and tuple(m.stride) == (1, 1)
            and tuple(m.dilation) == (1, 1) and not isinstance(m.padding, str) and tuple(m.padding) == (0, 0))


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


def _alias_param(p: torch.Tensor) -> torch.nn.Parameter:
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


def _quant_state_tensors(qs) -> list[torch.Tensor]:
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
            out += _quant_state_tensors(qs)
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
    scope: str = "",
    tables: Collection[str] = (),
    tensor_of: TensorOf | None = None,
    on_clone: OnClone | None = None,
    work_device=None,
    store_device=None,
) -> tuple[torch.nn.Module, QuantReport]:
    """A new tree: Linear/Conv2d layers under ``scope`` quantized, every other module shallow-cloned.

    ``scope`` is a dotted module name ("" = the whole tree, "diffusion_model" = that subtree).
    1x1 convolutions take the ``linear`` format (see ``_pointwise``). ``tables`` names Embedding
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
        if is_quantized_layer(m):
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
        if isinstance(m, torch.nn.Conv2d) and linear != "none" and _pointwise(m):
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
                new = quantized_linear(w, b, fmt, work_device=work_device, store_device=store_device)
                kind = "Linear"
            elif isinstance(module, torch.nn.Embedding):
                new = quantized_embedding(w, fmt, work_device=work_device, store_device=store_device)
                kind = "Embedding"
            else:
                new = quantized_conv(module, w, b, fmt, work_device=work_device, store_device=store_device)
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
                    params[k] = _alias_param(value(p + k, t, False))
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


def probe(linear: str, conv: str, device) -> None:
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
                "choose another format (int8 or none), or run on a device bitsandbytes supports"
            ) from e
        err = float((y - want).norm() / want.norm().clamp_min(1e-12))
        if not math.isfinite(err) or err > 0.5:
            raise QuantizationError(f"{what} gives wrong results on {device} (relative error {err:.2f}); choose another format")
