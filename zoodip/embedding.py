"""The EMBEDDING a node passes around, and the files users exchange.

Formats written (all read by ComfyUI's own ``embedding:`` loader):
- one text encoder (SD1.x, SD2.x): safetensors with one tensor ``emb_params`` (vectors, dim), kohya's key;
- two (SDXL): ``clip_l`` (vectors, 768) and ``clip_g`` (vectors, 1280).
Read as well: A1111 ``.pt`` (``string_to_param``, also the oldest format whose value is a
ParameterDict), loaded with ``weights_only=True`` only, never by running code in the file.
Training state (for exact resume) goes in a separate ``.zoodip-state`` file, which the host does
not list as an embedding.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .files import atomic_write, first_lines, write_together

log = logging.getLogger("zoodip")

STATE_SUFFIX = ".zoodip-state"
SINGLE = "*"  # the key of a one-encoder embedding whose encoder is not known from the file
_FILE_KEYS = {"l": "clip_l", "g": "clip_g"}


@dataclass
class Embedding:
    """Token vectors per text encoder: {"l": (V, 768)} for SD1.x, {"l": ..., "g": ...} for SDXL."""

    name: str
    vectors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    state: dict | None = None  # ZOTrainer.state_dict() when training can resume exactly

    @property
    def num_vectors(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    def for_encoders(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """The vectors for a CLIP whose encoders are ``keys``; a clear error when they do not fit."""
        if set(self.vectors) == set(keys):
            return dict(self.vectors)
        if len(keys) == 1 and set(self.vectors) == {SINGLE}:
            return {keys[0]: self.vectors[SINGLE]}
        raise ValueError(
            f"embedding {self.name!r} is for {_describe(self.vectors)}, but this CLIP has {_describe(keys)}: "
            "use an embedding trained for this model family"
        )


# the text encoders of each family, by the keys of the host's token dicts
_ENCODERS = {
    ("l",): "one text encoder (SD1.x, width 768)",
    ("h",): "one text encoder (SD2.x, width 1024)",
    ("g", "l"): "two text encoders (SDXL)",
}


def _describe(keys) -> str:
    keys = tuple(sorted(keys))
    if keys in _ENCODERS:
        return _ENCODERS[keys]
    if len(keys) == 1:
        return "one text encoder"
    return f"{len(keys)} text encoders ({', '.join(keys)})"


def _file_tensors(emb: Embedding) -> dict[str, torch.Tensor]:
    vecs = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in emb.vectors.items()}
    if len(vecs) == 1:
        return {"emb_params": next(iter(vecs.values()))}
    return {_FILE_KEYS.get(k, f"clip_{k}"): v for k, v in vecs.items()}


def to_bytes(emb: Embedding, extra_metadata: dict[str, str] | None = None) -> bytes:
    meta = {**emb.metadata, **(extra_metadata or {})}
    meta["zoodip.name"] = emb.name
    meta["zoodip.encoders"] = ",".join(emb.vectors)
    return st_save(_file_tensors(emb), metadata={k: str(v) for k, v in meta.items()})


def save(emb: Embedding, path: Path, overwrite: bool = False, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write the embedding alone, atomically; never replaces a file unless ``overwrite``."""
    check_vectors(emb)
    return atomic_write(Path(path), to_bytes(emb, extra_metadata), overwrite=overwrite)


def save_with_state(
    emb: Embedding, path: Path, overwrite: bool = False, extra_metadata: dict[str, str] | None = None,
    state_overwrite: bool = True,
) -> Path:
    """The embedding and its training state (``state_path``) as one unit: both are written or neither.

    The embedding file is never replaced unless ``overwrite``. A state file already beside a new
    embedding belongs to no vectors of it, so it is replaced (unless ``state_overwrite`` is off, as
    for snapshots, which never replace anything); an embedding saved without a state removes it,
    so a later resume cannot pick up another token's state.
    """
    check_vectors(emb)
    path = Path(path)
    sp = state_path(path)
    files = [(path, to_bytes(emb, extra_metadata), overwrite)]
    if emb.state is not None:
        files.append((sp, state_to_bytes(emb.state), state_overwrite))
    write_together(files)
    if emb.state is None and sp.exists():
        try:
            sp.unlink()
        except OSError as e:  # the embedding is saved; its stale state is only ignored on load (it does not match)
            log.warning("ZOODiP: could not remove the old training state %s (%s)", sp, e)
    return path


# The largest value half precision holds: a text encoder running in fp16 turns anything larger
# into inf, and every image that uses the token black. Real tokens are nowhere near it (CLIP's own
# token rows are far below 1 in magnitude; trained textual-inversion tokens stay within a few units):
# such values come from a runaway learning rate or a damaged file.
MAX_ABS_VALUE = 65504.0


def check_vectors(emb: Embedding, source: str | None = None) -> Embedding:
    """Refuse vectors no text encoder should see: NaN/inf, absurdly large, empty or of the wrong shape."""
    where = source or f"embedding {emb.name!r}"
    counts = set()
    for key, v in emb.vectors.items():
        label = "" if len(emb.vectors) == 1 else f" ({_FILE_KEYS.get(key, key)})"
        if not torch.is_tensor(v) or not v.is_floating_point():
            raise ValueError(f"{where}{label} does not hold float token vectors: it is not an embedding ZOODiP can read")
        if v.ndim != 2:
            raise ValueError(
                f"{where}{label} holds a tensor of shape {tuple(v.shape)}; an embedding is (vectors, width), e.g. "
                "(1, 768) for SD1.x: this is not a textual-inversion embedding ZOODiP can read"
            )
        if v.shape[0] == 0 or v.shape[1] == 0:
            raise ValueError(
                f"{where}{label} holds no vectors (shape {tuple(v.shape)}): the file is empty or damaged; "
                "pick another embedding, or train the token again"
            )
        counts.add(v.shape[0])
        if not bool(torch.isfinite(v).all()):
            raise ValueError(
                f"{where}{label} holds NaN or infinite values: it is damaged (or was saved from a run that diverged) "
                "and would turn every image that uses it black. Pick another embedding, or train the token again"
            )
        biggest = float(v.abs().max())
        if biggest > MAX_ABS_VALUE:
            raise ValueError(
                f"{where}{label} holds values up to {biggest:.3g}, far beyond any real token (beyond {MAX_ABS_VALUE:g}, "
                "a half-precision text encoder overflows): it was trained with a runaway learning rate, or is "
                "damaged. Pick another embedding, or train again with a smaller learning_rate"
            )
    if len(counts) > 1:
        raise ValueError(
            f"{where} holds a different number of vectors per text encoder ({sorted(counts)}): it is damaged; "
            "pick another embedding"
        )
    return emb


def _read_safetensors_metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return dict(header.get("__metadata__", {}) or {})


class _ParameterDictData:
    """Stands in for torch.nn.ParameterDict when reading the oldest textual-inversion ``.pt`` files
    (``string_to_param`` held a ParameterDict): it keeps the pickled attributes as plain data. No
    module is built and no code of the file runs; every other class in the file is still refused
    by ``weights_only``."""

    def __setstate__(self, state) -> None:
        self.state = state if isinstance(state, dict) else {}

    def values(self):
        params = self.state.get("_parameters") or {}
        return [v for v in params.values() if torch.is_tensor(v)]


_PARAMETER_DICT = "torch.nn.modules.container.ParameterDict"


def _read_pickle(path: Path) -> dict:
    """A ``.pt``/``.bin`` embedding, read with ``weights_only``: tensors and plain data only."""
    try:
        with torch.serialization.safe_globals([(_ParameterDictData, _PARAMETER_DICT)]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with code in them are refused, not executed
        try:
            unsafe = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g != _PARAMETER_DICT]
        except Exception:  # not a zip checkpoint: no list to give
            unsafe = []
        what = f"it needs {', '.join(unsafe)} to load, which could run code" if unsafe else first_lines(e)
        raise ValueError(
            f"{path.name} could not be read safely (weights_only): {what}. Embeddings are read without running "
            "code in them: use a .safetensors version of this embedding"
        ) from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path.name} is not an embedding file (it holds a {type(obj).__name__}, not a dict of tensors)")
    return obj


# An embedding file holds one tensor per text encoder (and a few at most in other tools' formats);
# a file with many more is a model, LoRA or VAE put in the wrong folder.
MAX_TENSORS = 16
_KNOWN_KEYS = ("emb_params", "clip_l", "clip_g")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors an embedding needs, read without loading the rest of the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            meta = dict(f.metadata() or {})
            wanted = [k for k in keys if k in _KNOWN_KEYS]
            if not wanted:
                if len(keys) > MAX_TENSORS:
                    raise ValueError(
                        f"{path.name} holds {len(keys)} tensors and no embedding key ({', '.join(_KNOWN_KEYS)}): it "
                        "looks like a model, LoRA or VAE, not an embedding; move it to its own models folder"
                    )
                wanted = keys
            return {k: f.get_tensor(k) for k in wanted}, meta
    except (OSError, ValueError):
        raise
    except Exception as e:  # the library's text names no file
        raise ValueError(
            f"{path.name} is not a readable safetensors file ({first_lines(e)}): it is truncated or damaged; "
            "download or save it again"
        ) from e


def load(path: Path) -> Embedding:
    """Read an embedding file (safetensors, or A1111 .pt/.bin with weights_only), checked:
    vectors that are non-finite, absurdly large, empty or of the wrong shape are refused."""
    path = Path(path)
    name = path.stem
    meta: dict[str, str] = {}
    if path.suffix.lower() in (".safetensors", ".sft"):
        tensors, meta = _read_safetensors(path)
    elif path.suffix.lower() in (".pt", ".bin"):
        obj = _read_pickle(path)
        if "string_to_param" in obj:
            params = obj["string_to_param"]
            values = list(params.values()) if hasattr(params, "values") else []
            if not values or not torch.is_tensor(values[0]):
                raise ValueError(f"{path.name}: its string_to_param holds no tensor; it is not an embedding ZOODiP can read")
            tensors = {"emb_params": values[0].detach()}
        else:
            tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    else:
        raise ValueError(f"{path.name}: embeddings are .safetensors, .pt or .bin files")
    if "clip_l" in tensors and "clip_g" in tensors:
        vectors = {"l": tensors["clip_l"], "g": tensors["clip_g"]}
    else:
        candidates = [v for v in tensors.values() if torch.is_tensor(v) and v.ndim in (1, 2)]
        if "emb_params" in tensors:
            candidates = [tensors["emb_params"]]
        if not candidates:
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(tensors.items())[:4])
            raise ValueError(
                f"{path.name} holds no embedding tensor ({shapes or 'no tensors'}): an embedding is one tensor "
                "(vectors, width), e.g. (1, 768) for SD1.x"
            )
        keys = meta.get("zoodip.encoders", "")
        key = keys if keys and "," not in keys else SINGLE
        vectors = {key: candidates[0]}
    vectors = {k: (v.unsqueeze(0) if v.ndim == 1 else v) for k, v in vectors.items()}
    emb = Embedding(name=meta.get("zoodip.name", name), vectors=vectors, metadata=meta)
    check_vectors(emb, path.name)
    emb.vectors = {k: v.to(torch.float32) for k, v in vectors.items()}
    return emb


# --- training state: nested dicts of tensors and plain values, flattened into safetensors ---

def _flatten(obj, prefix: str, tensors: dict, plain: dict) -> None:
    if torch.is_tensor(obj):
        tensors[prefix] = obj.detach().cpu().contiguous()
    elif isinstance(obj, dict):
        plain[prefix] = {"__dict__": list(obj)}
        for k, v in obj.items():
            _flatten(v, f"{prefix}/{k}", tensors, plain)
    else:
        plain[prefix] = obj


def state_to_bytes(state: dict) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict = {}
    _flatten(state, "", tensors, plain)
    return st_save(tensors, metadata={"zoodip.state": json.dumps(plain)})


def state_from_bytes(data: bytes) -> dict:
    tensors = st_load(data)
    plain = json.loads(_read_safetensors_metadata(data)["zoodip.state"])

    def build(prefix: str):
        if prefix in tensors:
            return tensors[prefix]
        v = plain[prefix]
        if isinstance(v, dict) and "__dict__" in v:
            return {k: build(f"{prefix}/{k}") for k in v["__dict__"]}
        return v

    return build("")


def state_path(embedding_path: Path) -> Path:
    """``dir/name.safetensors`` -> ``dir/name.zoodip-state`` (only the extension is replaced, so
    ``my.v1`` and ``my.v2`` keep separate states)."""
    p = Path(embedding_path)
    return p.with_name(p.stem + STATE_SUFFIX)
