"""The EMBEDDING a node passes around, and the files users exchange.

Formats written (all read by ComfyUI's own ``embedding:`` loader):
- one text encoder (SD1.x, SD2.x): safetensors with one tensor ``emb_params`` (vectors, dim), kohya's key;
- two (SDXL): ``clip_l`` (vectors, 768) and ``clip_g`` (vectors, 1280).
Read as well: A1111 ``.pt`` (``string_to_param``), loaded with ``weights_only=True`` only.
Training state (for exact resume) goes in a separate ``.zoodip-state`` file, which the host does
not list as an embedding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .files import atomic_write

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
    """Write the embedding atomically; never replaces a file unless ``overwrite``."""
    return atomic_write(Path(path), to_bytes(emb, extra_metadata), overwrite=overwrite)


def _read_safetensors_metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return dict(header.get("__metadata__", {}) or {})


def load(path: Path) -> Embedding:
    """Read an embedding file (safetensors, or A1111 .pt/.bin with weights_only)."""
    path = Path(path)
    name = path.stem
    meta: dict[str, str] = {}
    if path.suffix.lower() in (".safetensors", ".sft"):
        data = path.read_bytes()
        tensors = st_load(data)
        meta = _read_safetensors_metadata(data)
    elif path.suffix.lower() in (".pt", ".bin"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickles with code in them are refused, not executed
            raise ValueError(f"{path.name} could not be read safely (weights_only): {e}") from e
        if not isinstance(obj, dict):
            raise ValueError(f"{path.name} is not an embedding file")
        if "string_to_param" in obj:
            tensors = {"emb_params": next(iter(obj["string_to_param"].values()))}
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
            raise ValueError(f"{path.name} holds no embedding tensor")
        keys = meta.get("zoodip.encoders", "")
        key = keys if keys and "," not in keys else SINGLE
        vectors = {key: candidates[0]}
    vectors = {k: (v.unsqueeze(0) if v.ndim == 1 else v).to(torch.float32) for k, v in vectors.items()}
    return Embedding(name=meta.get("zoodip.name", name), vectors=vectors, metadata=meta)


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
