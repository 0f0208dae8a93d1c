"""The bridge between ComfyUI's objects and the engine's duck-typed loss pieces.

Everything that touches the host lives here: reading the model family, running the host's own
text encoder on token vectors, running the UNet the way the sampler does (``calc_cond_batch``,
which also decides how many queries fit in one batch from the free memory it sees), and giving a
CLIP a tokenizer that resolves ``embedding:<name>`` from memory. No weights are copied, cast or
patched, and no autograd graph is built.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import comfy.model_management as mm
import comfy.sampler_helpers
import comfy.samplers
import torch

from ..zoodip.embedding import Embedding
from ..zoodip.settings import MAX_VECTORS, paper_value

if TYPE_CHECKING:  # the host's class, for the hints only
    from comfy.sd import CLIP

log = logging.getLogger("zoodip")

MARKER = "__zoodip_token__"


@dataclass(frozen=True)
class Family:
    name: str  # shown to users
    encoders: tuple[str, ...]  # the keys of the host's token dicts, e.g. ("l",) or ("l", "g")
    dims: tuple[int, ...]
    num_train_timesteps: int
    paper_mu: float  # the perturbation the paper used for this family
    paper_t_max: int  # the upper end of PUTS the paper used


# model_config class name -> (family name, text encoder keys, widths); the paper's mu and PUTS
# t_max per family are in the settings table (zoodip/settings.py)
_SD1 = ("SD1.x", ("l",), (768,))
_SD2 = ("SD2.x", ("h",), (1024,))
_SDXL = ("SDXL", ("l", "g"), (768, 1280))
_SUPPORTED = {
    "SD15": _SD1,
    "SD20": _SD2,  # eps and v-prediction: the model's own sampling object tells them apart
    "SDXL": _SDXL,
    "SSD1B": _SDXL,
    "Segmind_Vega": _SDXL,
    "KOALA_700M": _SDXL,
    "KOALA_1B": _SDXL,
}
SUPPORTED_TEXT = "SD1.x (SD1.5 and fine-tunes), SD2.x (eps and v-prediction) and SDXL (and its distilled variants)"


def detect_family(model, clip) -> Family:
    """The model family from the loaded objects, or a ValueError that names what is supported."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    cname = type(config).__name__ if config is not None else type(model).__name__
    if cname not in _SUPPORTED:
        raise ValueError(f"ZOODiP cannot train on this model ({cname}): supported are {SUPPORTED_TEXT}")
    name, keys, dims = _SUPPORTED[cname]
    tokens = clip.tokenize("a")
    if tuple(sorted(tokens)) != tuple(sorted(keys)):
        raise ValueError(
            f"the CLIP does not match the {name} model (its text encoders are {sorted(tokens)}, {name} needs "
            f"{sorted(keys)}): connect the CLIP that came with the checkpoint"
        )
    from .quantize import check_trainable  # layers that round their inputs would erase the probes

    check_trainable(model, clip)
    sampling = model.get_model_object("model_sampling")
    n = int(getattr(sampling, "sigmas", torch.zeros(1000)).shape[0])
    return Family(name, keys, dims, n, paper_value("perturbation", name), paper_value("t_max", name))


def _encoder(clip, key: str):
    return getattr(clip.cond_stage_model, f"clip_{key}")


def _set_clip_layer(clip) -> None:
    # the same options CLIP.encode_from_tokens applies, so training sees what sampling will see
    clip.cond_stage_model.reset_clip_options()
    if clip.layer_idx is not None:
        clip.cond_stage_model.set_clip_options({"layer": clip.layer_idx})


def word_vectors(clip, key: str, text: str) -> torch.Tensor:
    """The input-embedding rows of ``text``'s tokens (without start/end), float32 (k, dim)."""
    if "embedding:" in text:
        raise ValueError("init_word must be plain words, not an embedding:... reference")
    pairs = clip.tokenize(text)[key][0]
    sub = getattr(clip.tokenizer, f"clip_{key}")
    # the word's tokens lie between the start token and the first end token; the pad token is
    # not skipped inside them (SD2's and CLIP-G's pad is id 0, which is also the token of "!")
    ids = []
    for tok, _ in pairs:
        if not isinstance(tok, int) or (tok == sub.start_token and not ids):
            continue
        if tok == sub.end_token:
            break
        ids.append(tok)
    if not ids:
        raise ValueError(f"init_word {text!r} has no tokens for the text encoder: use a plain word such as 'dog'")
    clip.load_model()
    emb = _encoder(clip, key).transformer.get_input_embeddings()
    ids_t = torch.tensor([ids], device=emb.weight.device, dtype=torch.long)
    return emb(ids_t, out_dtype=torch.float32)[0].detach().to("cpu", torch.float32).clone()


def init_vectors(clip, family: Family, init_word: str, num_vectors: int) -> dict[str, torch.Tensor]:
    """Initial token values: the init word's token rows, repeated cyclically to num_vectors."""
    out = {}
    for key in family.encoders:
        rows = word_vectors(clip, key, init_word)
        if rows.shape[0] > num_vectors:
            log.warning(
                "ZOODiP: init_word %r has %d tokens but num_vectors is %d; using the first %d",
                init_word, rows.shape[0], num_vectors, num_vectors,
            )
        idx = torch.arange(num_vectors) % rows.shape[0]
        out[key] = rows[idx].clone()
    return out


# --- a CLIP that resolves embedding:<name> from memory ---

def _resolver(original, table: dict[str, torch.Tensor]):
    def try_get_embedding(embedding_name: str):
        words = embedding_name.split()
        first = words[0] if words else ""
        leftover = " ".join(words[1:])
        if first in table:
            return table[first], leftover
        stripped = first.strip(",")
        if stripped in table:
            return table[stripped], f"{first[len(stripped):]} {leftover}"
        return original(embedding_name)

    return try_get_embedding


def clip_with_embeddings(clip: CLIP, embeddings: dict[str, dict[str, torch.Tensor]]) -> CLIP:
    """A clone of ``clip`` whose tokenizer resolves each name in ``embeddings`` to its vectors.

    The tokenizer is copied (``CLIP.clone`` shares it), so the input CLIP is left unchanged.
    """
    new = clip.clone()
    tok = copy.copy(clip.tokenizer)
    keys = {k for e in embeddings.values() for k in e}
    for key in keys:
        attr = f"clip_{key}"
        sub = copy.copy(getattr(tok, attr))
        table = {name: e[key].detach().to("cpu", torch.float32).clone() for name, e in embeddings.items()}
        sub._try_get_embedding = _resolver(sub._try_get_embedding, table)
        if sub.embedding_directory is None:  # the tokenizer skips embedding: words without a directory
            sub.embedding_directory = []
        setattr(tok, attr, sub)
    new.tokenizer = tok
    return new


def apply_embedding(clip: CLIP, emb: Embedding, token_name: str) -> CLIP:
    keys = list(clip.tokenize("a").keys())
    vectors = emb.for_encoders(keys)
    for k, v in vectors.items():
        width = _encoder(clip, k).transformer.get_input_embeddings().embedding_dim
        if v.shape[-1] != width:
            raise ValueError(
                f"embedding {emb.name!r} has vectors of width {v.shape[-1]} but this text encoder needs {width}: "
                "it was trained for another model family (widths: SD1.x 768, SD2.x 1024, SDXL 768 + 1280); "
                "use an embedding trained for this model family"
            )
    return clip_with_embeddings(clip, {token_name: vectors})


# --- the two host functions the engine's DenoisingLoss calls ---

class TokenTextEncoder:
    """Runs the host's text encoder on a batch of token values spliced into a prompt template.

    Templates are tokenized once; per call only the B token sequences are assembled (Python lists
    of ids with the vectors at the token's positions) and encoded in one batch.
    """

    def __init__(self, clip, family: Family, templates: list[str], num_vectors: int) -> None:
        self.clip = clip
        self.family = family
        self.num_vectors = num_vectors
        marker = {k: torch.zeros(num_vectors, d) for k, d in zip(family.encoders, family.dims)}
        probe = clip_with_embeddings(clip, {MARKER: marker})
        self.sequences: list[dict[str, tuple[list, list[int]]]] = []
        for template in templates:
            text = template.replace("{token}", f"embedding:{MARKER}")
            tokens = probe.tokenize(text)
            per_key = {}
            for key in family.encoders:
                chunks = tokens[key]
                if len(chunks) != 1:
                    raise _too_long(clip, key, template, num_vectors)
                seq = [t for t, *_ in chunks[0]]
                positions = [i for i, t in enumerate(seq) if torch.is_tensor(t)]
                if len(positions) != num_vectors:
                    raise ValueError(f"prompt template {template!r} must contain the token exactly once")
                if any(w != 1.0 for _, w, *_ in chunks[0]):
                    raise ValueError(f"prompt template {template!r} uses (word:weight) emphasis, which training does not support")
                per_key[key] = (seq, positions)
            self.sequences.append(per_key)

    def __call__(self, thetas: torch.Tensor, template: int) -> dict:
        # Load only if needed: sampling_session loaded it with the UNet, once per run. Calling
        # load_models_gpu every step would, on a GPU, re-run its memory management for the
        # text encoder alone (which may evict part of the UNet, or empty the CUDA cache).
        if self.clip.patcher not in mm.loaded_models():
            self.clip.load_model()
        _set_clip_layer(self.clip)
        out = {}
        # theta holds every encoder's vectors side by side: (B, V, sum of widths)
        parts = thetas.split(list(self.family.dims), dim=-1)
        for key, part in zip(self.family.encoders, parts):
            seq, positions = self.sequences[template][key]
            batch = []
            for b in range(part.shape[0]):
                s = list(seq)
                for j, p in enumerate(positions):
                    s[p] = part[b, j]
                batch.append(s)
            z, pooled = _encoder(self.clip, key)(batch)[:2]
            out[key] = (z, pooled)
        if len(self.family.encoders) == 1:
            # one encoder: its hidden states are the cross-attention context
            z, pooled = out[self.family.encoders[0]]
            return {"cross_attn": z, "pooled_output": pooled}
        # SDXL: CLIP-L and CLIP-G hidden states side by side, the pooled vector from CLIP-G
        # (what the host's SDXL text encoder returns for a prompt)
        (zl, _), (zg, pooled) = out["l"], out["g"]
        cut = min(zl.shape[1], zg.shape[1])
        return {"cross_attn": torch.cat([zl[:, :cut], zg[:, :cut]], dim=-1), "pooled_output": pooled}


def _too_long(clip, key: str, template: str, num_vectors: int) -> ValueError:
    """Say which of the two fills CLIP's window: the template's own words or the token's vectors."""
    slots = MAX_VECTORS  # 77 minus the start and end tokens
    words = getattr(clip.tokenizer, f"clip_{key}").tokenizer(template.replace("{token}", ""))["input_ids"]
    own = max(0, len(words) - 2)
    if own >= slots:
        return ValueError(
            f"prompt template {template!r} is too long: its words alone take {own} of CLIP's {slots} token slots; "
            "shorten it"
        )
    return ValueError(
        f"num_vectors {num_vectors} plus the {own} tokens of prompt template {template!r} need {num_vectors + own} of "
        f"CLIP's {slots} token slots: with this template num_vectors can be at most {slots - own} (or shorten the template)"
    )


class HostDenoiser:
    """x0_hat for one noisy latent under B conditionings, through the sampler's own batching path."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        base = self.model.model
        z, pooled = cond["cross_attn"], cond.get("pooled_output")
        conds = comfy.sampler_helpers.convert_cond(
            [[z[b : b + 1], {} if pooled is None else {"pooled_output": pooled[b : b + 1]}] for b in range(z.shape[0])]
        )
        conds = comfy.samplers.encode_model_conds(base.extra_conds, conds, x_t, x_t.device, "positive", latent_image=x_t)
        outs = comfy.samplers.calc_cond_batch(base, [[c] for c in conds], x_t, sigma, self.model.model_options)
        return torch.cat(outs)


@contextlib.contextmanager
def sampling_session(model, clip) -> Iterator[None]:
    """Load both models as the sampler would and set the patcher state ``calc_cond_batch`` needs."""
    mm.load_models_gpu([model, clip.patcher])
    model.pre_run()
    try:
        yield
    finally:
        model.cleanup()


def encode_references(model, vae, images: torch.Tensor) -> torch.Tensor:
    """Reference latents in model space, once per run, on the model's device."""
    latents = vae.encode(images[:, :, :, :3])
    latents = model.model.process_latent_in(latents)
    return latents.to(device=model.load_device, dtype=torch.float32)
