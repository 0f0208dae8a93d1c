"""ZOODiP Train Token: the node a user queues to learn a token."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.utils

from ..zoodip.settings import MAX_VECTORS, TrainSettings
from ..zoodip.templates import DEFAULT_TEMPLATES_TEXT
from ..zoodip.trainer import NonFiniteLossError
from . import host, training
from .common import save_snapshot

log = logging.getLogger("zoodip")

_T = {
    "model": "The diffusion model from your checkpoint loader, at whatever precision it was loaded. Its weights are only read.",
    "clip": "The CLIP from the same checkpoint.",
    "vae": "The VAE from the same checkpoint; it encodes the photos once, before training.",
    "images": "3-5 photos of the subject (Load Training Images, or any IMAGE batch).",
    "token_name": "The new word. Use it in prompts as embedding:<token_name>. Letters, digits, - _ . only.",
    "init_word": "A word close to the subject (e.g. 'dog'); its token vectors are the starting point. Several tokens fill several vectors.",
    "num_vectors": "Vectors the token uses (each takes one of the prompt's 75 token slots). The paper trains 1.",
    "steps": "Total training steps (paper: 30,000). A resumed run continues up to this total.",
    "learning_rate": "Adam learning rate (paper: 5e-3).",
    "queries": "n, random directions per step; a step costs n+1 forward passes (paper: 1 or 2; 2 scored best).",
    "perturbation": "mu, the size of each random probe of the token (paper: 1e-3; 1e-2 for SD2.1/SDXL/int4).",
    "seed": "Seeds every random draw: the same seed and inputs give the same token, bit for bit.",
    "puts": "Optional PUTS Sampler Config: train on the middle band of timesteps. Without it, timesteps are uniform over all.",
    "subspace": "Optional Subspace Projector: denoise the gradient estimates with the token's own trajectory.",
    "prompt_templates": "One prompt per line, each with {token} once. Empty uses the standard object templates.",
    "resume": "Continue from an embedding (Load Embedding). With its training state, the run continues exactly.",
    "two_sided": "Two-sided estimate: 2n passes per step instead of n+1, less biased.",
    "held_out_every": "Every K steps, also measure the loss on fixed held-out noise and timesteps (costs 4 passes). 0 = off.",
}


class ZOODiPTrainToken:
    CATEGORY = "ZOODiP"
    DESCRIPTION = (
        "Learns a new token (textual inversion) from a few photos with forward passes only (ZOODiP, "
        "arXiv 2503.14868), on the model already loaded, at sampling memory. Outputs a CLIP that "
        "understands embedding:<token_name>, the embedding, and the loss history."
    )
    RETURN_TYPES = ("CLIP", "EMBEDDING", "ZOODIP_LOSS")
    RETURN_NAMES = ("clip", "embedding", "loss")
    OUTPUT_TOOLTIPS = (
        "A copy of the input CLIP that resolves embedding:<token_name> to the trained vectors (nothing is saved).",
        "The trained token; connect Save Embedding to keep it.",
        "The clean loss of every step (and the held-out loss, if enabled).",
    )
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": _T["model"]}),
                "clip": ("CLIP", {"tooltip": _T["clip"]}),
                "vae": ("VAE", {"tooltip": _T["vae"]}),
                "images": ("IMAGE", {"tooltip": _T["images"]}),
                "token_name": ("STRING", {"default": "my-token", "tooltip": _T["token_name"]}),
                "init_word": ("STRING", {"default": "*", "tooltip": _T["init_word"]}),
                "num_vectors": ("INT", {"default": 1, "min": 1, "max": MAX_VECTORS, "tooltip": _T["num_vectors"]}),
                "steps": ("INT", {"default": 30000, "min": 1, "max": 10_000_000, "tooltip": _T["steps"]}),
                "learning_rate": ("FLOAT", {"default": 5e-3, "min": 0.0, "max": 10.0, "step": 1e-4, "round": False, "tooltip": _T["learning_rate"]}),
                "queries": ("INT", {"default": 2, "min": 1, "max": 64, "tooltip": _T["queries"]}),
                "perturbation": ("FLOAT", {"default": 1e-3, "min": 0.0, "max": 10.0, "step": 1e-4, "round": False, "tooltip": _T["perturbation"]}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": _T["seed"]}),
            },
            "optional": {
                "puts": ("ZOODIP_PUTS", {"tooltip": _T["puts"]}),
                "subspace": ("ZOODIP_SUBSPACE", {"tooltip": _T["subspace"]}),
                "prompt_templates": ("STRING", {"multiline": True, "default": DEFAULT_TEMPLATES_TEXT, "tooltip": _T["prompt_templates"]}),
                "resume": ("EMBEDDING", {"tooltip": _T["resume"]}),
                "two_sided": ("BOOLEAN", {"default": False, "tooltip": _T["two_sided"]}),
                "held_out_every": ("INT", {"default": 0, "min": 0, "max": 1_000_000, "tooltip": _T["held_out_every"]}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, token_name, init_word, learning_rate, perturbation, prompt_templates=None):
        # Runs when the prompt is queued, before any node executes. A linked input arrives as
        # None here and is checked again when the node runs.
        s = TrainSettings(token_name="x")
        for name, value in (("token_name", token_name), ("init_word", init_word),
                            ("learning_rate", learning_rate), ("perturbation", perturbation),
                            ("prompt_templates", prompt_templates)):
            if value is not None:
                setattr(s, name, float(value) if name in ("learning_rate", "perturbation") else value)
        try:
            s.validate()
        except (ValueError, TypeError) as e:
            return str(e)
        return True

    def train(self, model, clip, vae, images, token_name, init_word, num_vectors, steps, learning_rate, queries,
              perturbation, seed, puts=None, subspace=None, prompt_templates="", resume=None, two_sided=False,
              held_out_every=0, unique_id=None):
        settings = TrainSettings(
            token_name=token_name, init_word=init_word, num_vectors=num_vectors, steps=steps,
            learning_rate=learning_rate, queries=queries, perturbation=perturbation, seed=seed,
            two_sided=two_sided, puts=puts, subspace=subspace, prompt_templates=prompt_templates or "",
        )
        run = training.prepare(model, clip, vae, images, settings, resume=resume)
        start = run.trainer.step_count
        if start >= steps:
            log.info("ZOODiP: %s is already at step %d of %d; nothing to train", token_name, start, steps)
        pbar = comfy.utils.ProgressBar(steps, node_id=unique_id)
        pbar.update_absolute(start, steps)
        report_every = max(1, steps // 100)

        def on_step(r, rate):
            pbar.update_absolute(r.step, steps)
            if r.step % report_every == 0 or r.step == steps:
                text = f"step {r.step}/{steps}  loss {r.loss:.4f}  {rate:.2f} it/s"
                _progress_text(text, unique_id)
                log.info("ZOODiP %s: %s", token_name, text)
            mm.throw_exception_if_processing_interrupted()  # Cancel stops within one step

        try:
            training.train(run, held_out_every=held_out_every, on_step=on_step)
        except (mm.InterruptProcessingException, NonFiniteLossError):
            if run.trainer.step_count > start:
                path = save_snapshot(run.embedding(), run.trainer.step_count)
                log.warning("ZOODiP: stopped at step %d; the token learned so far is in %s", run.trainer.step_count, path)
            raise
        emb = run.embedding()
        trained_clip = host.clip_with_embeddings(clip, {token_name: emb.vectors})
        return (trained_clip, emb, run.history)


def _progress_text(text: str, node_id) -> None:
    try:
        from server import PromptServer

        server = getattr(PromptServer, "instance", None)
        if server is not None and node_id is not None:
            server.send_progress_text(text, node_id)
    except Exception:  # headless runs have no server; the log line carries the same text
        pass
