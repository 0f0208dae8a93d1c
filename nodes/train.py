"""ZOODiP Train Token: the node a user queues to learn a token."""

from __future__ import annotations

import json
import logging

import comfy.model_management as mm
import comfy.utils
import folder_paths
import numpy as np
import torch

from ..zoodip.embedding import Embedding, check_vectors
from ..zoodip.settings import MAX_VECTORS, TrainSettings
from ..zoodip.templates import DEFAULT_TEMPLATES_TEXT
from ..zoodip.trainer import NonFiniteLossError, NothingLearnedError, check_state
from . import host, training
from .common import check_saves_before_training, save_snapshot, snapshot_name

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
    "resume": (
        "Continue from an embedding (Load Embedding). With its training state (saved by Save Embedding, save_every "
        "or Cancel) the run continues from its step to 'steps', exactly as if it had never stopped, provided the "
        "settings are the same. num_vectors and the model family must match; other changed settings apply from "
        "the resumed step on."
    ),
    "two_sided": "Two-sided estimate: 2n passes per step instead of n+1, less biased.",
    "query_batch": (
        "Queries per UNet call. 2 (default) is the batch a CFG sampler runs, so training needs about the memory "
        "sampling needs; 0 sends all n+1 queries in one call (a little faster, more memory)."
    ),
    "held_out_every": "Every K steps, also measure the loss on fixed held-out noise and timesteps (costs 4 passes). 0 = off.",
    "preview_every": (
        "Every K steps, sample a small image with the token as it is (8 steps, fixed seed, the photos' size): shown "
        "as the live preview and in the node, and returned as the previews output. 0 = off."
    ),
    "preview_prompt": "The prompt of the previews; {token} stands for embedding:<token_name>.",
    "save_every": (
        "Every K steps, save the token and its training state to models/embeddings/zoodip-runs/<token_name>/"
        "step-<k>.safetensors (Load Embedding lists it; connect it to resume to continue). Cancel saves one too. 0 = off."
    ),
}


class ZOODiPTrainToken:
    CATEGORY = "ZOODiP"
    DESCRIPTION = (
        "Learns a new token (textual inversion) from a few photos with forward passes only (ZOODiP, "
        "arXiv 2503.14868), on the model already loaded, at sampling memory. Outputs a CLIP that "
        "understands embedding:<token_name>, the embedding, and the loss history."
    )
    RETURN_TYPES = ("CLIP", "EMBEDDING", "ZOODIP_LOSS", "IMAGE")
    RETURN_NAMES = ("clip", "embedding", "loss", "previews")
    OUTPUT_TOOLTIPS = (
        "A copy of the input CLIP that resolves embedding:<token_name> to the trained vectors (nothing is saved).",
        "The trained token; connect Save Embedding to keep it.",
        "The clean loss of every step (and the held-out loss, if enabled).",
        "The preview images, one per preview_every steps (a black image when previews are off).",
    )
    FUNCTION = "train"
    OUTPUT_NODE = True  # training is worth running on its own (snapshots, previews)

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
                "save_every": ("INT", {"default": 0, "min": 0, "max": 10_000_000, "tooltip": _T["save_every"]}),
                "preview_every": ("INT", {"default": 0, "min": 0, "max": 10_000_000, "tooltip": _T["preview_every"]}),
                "preview_prompt": ("STRING", {"default": "a photo of {token}", "tooltip": _T["preview_prompt"]}),
                "query_batch": ("INT", {"default": 2, "min": 0, "max": 64, "tooltip": _T["query_batch"]}),
            },
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
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
              held_out_every=0, save_every=0, preview_every=0, preview_prompt="a photo of {token}", query_batch=2,
              unique_id=None, prompt=None):
        settings = TrainSettings(
            token_name=token_name, init_word=init_word, num_vectors=num_vectors, steps=steps,
            learning_rate=learning_rate, queries=queries, perturbation=perturbation, seed=seed,
            two_sided=two_sided, puts=puts, subspace=subspace, prompt_templates=prompt_templates or "",
            query_batch=2 if query_batch is None else int(query_batch),
        )
        if save_every is None or int(save_every) < 0:
            raise ValueError(f"save_every must be 0 (off) or a number of steps, got {save_every}")
        save_every = int(save_every)
        check_saves_before_training(prompt, unique_id, token_name)
        if resume is not None:
            settings.validate()  # a bad setting is reported as such, not as a resume mismatch
            resume = check_resume(resume, settings, host.detect_family(model, clip))
        run = training.prepare(model, clip, vae, images, settings, resume=resume)
        start = run.trainer.step_count
        if start >= steps:
            log.info("ZOODiP: %s is already at step %d of %d; nothing to train", token_name, start, steps)
        elif start:
            log.info("ZOODiP: %s resumes at step %d of %d", token_name, start, steps)
        pbar = comfy.utils.ProgressBar(steps, node_id=unique_id)
        pbar.update_absolute(start, steps)
        report_every = max(1, steps // 100)
        saved = {"step": start, "path": None}  # the last step whose token is on disk

        def snapshot() -> None:
            path = save_snapshot(_embedding(run), run.trainer.step_count)
            saved.update(step=run.trainer.step_count, path=path)

        def on_step(r, rate):
            if r.skipped:
                log.warning("ZOODiP %s: step %d skipped: non-finite loss (%d skipped so far)",
                            token_name, r.step, run.trainer.skipped_steps)
            if save_every and r.step % save_every == 0:
                # before the Cancel check: a scheduled save is never lost to a Cancel
                try:
                    snapshot()
                    log.info("ZOODiP %s: step %d saved to %s", token_name, r.step, saved["path"])
                except OSError as e:  # a full disk should not end a long run; the next save tries again
                    log.error("ZOODiP %s: could not save step %d: %s", token_name, r.step, e)
                    _progress_text(f"could not save step {r.step}: {e}", unique_id)
            pbar.update_absolute(r.step, steps)  # the host's progress hook raises on Cancel here
            if r.step % report_every == 0 or r.step == steps:
                text = f"step {r.step}/{steps}  loss {r.loss:.4f}  {rate:.2f} it/s"
                _progress_text(text, unique_id)
                log.info("ZOODiP %s: %s", token_name, text)
            mm.throw_exception_if_processing_interrupted()  # Cancel stops within one step

        previews: list[torch.Tensor] = []
        preview = training.PreviewSettings(int(preview_every or 0), preview_prompt or "a photo of {token}")

        def on_preview(step: int) -> None:
            image = training.render_preview(run, vae, preview)
            previews.append(image)
            pbar.update_absolute(step, steps, ("JPEG", _to_pil(image), 512))  # the live preview

        try:
            training.train(run, held_out_every=held_out_every, on_step=on_step,
                           preview_every=preview.every, on_preview=on_preview)
        except Exception as e:  # Cancel, non-finite losses, or anything else: keep what was learned
            step = run.trainer.step_count
            where = None
            if training.learned_since(run, saved["step"]):
                try:
                    snapshot()
                except Exception as save_error:  # never hide the original error behind this one
                    log.error("ZOODiP: could not save the token learned so far: %s", save_error)
            if not training.learned_since(run, saved["step"]) and saved["path"] is not None:
                where = saved["path"]
            what = "cancelled" if isinstance(e, mm.InterruptProcessingException) else "stopped by an error"
            if where is not None:
                name = snapshot_name(where)
                log.warning(
                    "ZOODiP %s: %s at step %d of %d; the token learned so far is in %s (Load Embedding: %s; "
                    "connect it to resume to continue)", token_name, what, step, steps, where, name,
                )
                _progress_text(f"{what} at step {step}/{steps}: saved {name}", unique_id)
                if isinstance(e, NonFiniteLossError):
                    raise NonFiniteLossError(
                        f"{e}. The last good token is saved as {name} (Load Embedding lists it)."
                    ) from e
            else:
                log.warning("ZOODiP %s: %s at step %d of %d; no step changed the token since step %d, nothing to save",
                            token_name, what, step, steps, start)
                if isinstance(e, NonFiniteLossError) and not isinstance(e, NothingLearnedError):
                    raise NonFiniteLossError(
                        f"{e}. No step of this run changed the token, so nothing was saved (it is still "
                        f"{'the resumed embedding' if resume is not None else 'init_word ' + repr(init_word)})."
                    ) from e
            raise
        emb = _embedding(run)
        trained_clip = host.clip_with_embeddings(clip, {token_name: emb.vectors})
        if not previews:  # an IMAGE output must hold an image: a black one when previews are off
            return (trained_clip, emb, run.history, torch.zeros((1, 64, 64, 3)))
        result = (trained_clip, emb, run.history, torch.cat(previews))
        return {"ui": {"images": [_save_preview(p) for p in previews]}, "result": result}


# Settings a resumed run cannot change: the token would not fit.
_FIXED = ("num_vectors",)
# Settings whose new value applies from the resumed step on (bit-exact only when unchanged).
_APPLIED = ("learning_rate", "queries", "perturbation", "two_sided", "seed", "puts", "subspace", "prompt_templates")


def _embedding(run) -> Embedding:
    """The run's token, with the settings and family in its training state (checked on resume)."""
    emb = run.embedding()
    emb.state = {
        **emb.state,
        "settings": emb.metadata.get("zoodip.settings", ""),
        "family": run.family.name,
    }
    return emb


def _stored_settings(resume: Embedding) -> dict:
    text = (resume.state or {}).get("settings") or resume.metadata.get("zoodip.settings") or ""
    try:
        stored = json.loads(text) if text else {}
    except ValueError:
        stored = {}
    return stored if isinstance(stored, dict) else {}


def _current(settings: TrainSettings) -> dict:
    return json.loads(settings.to_metadata()["zoodip.settings"])


def check_resume(resume: Embedding, settings: TrainSettings, family) -> Embedding:
    """Refuse a resume that cannot continue; return the embedding with a state the new run can load.

    Refused (ValueError): another model family, another num_vectors. Any other changed setting
    (learning_rate, queries, perturbation, two_sided, seed, PUTS, subspace, templates) applies from the
    resumed step on, and is listed in the log; the result is then no longer bit-identical to an
    uninterrupted run. Steps is the total to reach, so it may change freely.
    """
    if not isinstance(resume, Embedding):
        raise ValueError("resume must be an EMBEDDING (from Load Embedding or ZOODiP Train Token)")
    check_vectors(resume, f"resume {resume.name!r}")
    trained_on = (resume.state or {}).get("family") or resume.metadata.get("zoodip.family")
    if trained_on and trained_on != family.name:
        raise ValueError(
            f"resume {resume.name!r} was trained on {trained_on}, but this model is {family.name}: "
            "resume on the same model family, or start a new token"
        )
    resume.for_encoders(list(family.encoders))  # one vs two text encoders: a clear error
    if resume.num_vectors != settings.num_vectors:
        raise ValueError(
            f"resume {resume.name!r} has {resume.num_vectors} vectors but num_vectors is {settings.num_vectors}: "
            f"set num_vectors to {resume.num_vectors} to continue it"
        )
    state = resume.state
    if state is None:
        log.info("ZOODiP: resume %r has no training state; training restarts from its vectors at step 0", resume.name)
        return resume
    stored, current = _stored_settings(resume), _current(settings)
    for key in _FIXED:
        if key in stored and stored[key] != current[key]:
            raise ValueError(f"resume {resume.name!r} was trained with {key}={stored[key]}, this run has {current[key]}")
    theta = state.get("theta")
    if not torch.is_tensor(theta) or tuple(theta.shape) != (settings.num_vectors, sum(family.dims)):
        raise ValueError(f"the training state of {resume.name!r} does not fit a {family.name} token of {settings.num_vectors} vectors")
    try:
        check_state(state, tuple(theta.shape))
    except ValueError as e:
        raise ValueError(
            f"the training state of resume {resume.name!r} cannot be used: {e}. Load the embedding again with Load "
            "Embedding (a damaged state is then left out and training restarts from its vectors)"
        ) from None
    changed = [k for k in _APPLIED if k in stored and stored[k] != current[k]]
    if changed:
        log.warning(
            "ZOODiP: resuming %r with changed settings %s; the new values apply from step %s on (the result is not "
            "the one an uninterrupted run would give)", resume.name,
            ", ".join(f"{k}: {stored[k]!r} -> {current[k]!r}" for k in changed), state.get("step"),
        )
    # The node's settings win over the ones in the state (the engine restores the saved ones).
    new = dict(state)
    new["seed"] = settings.seed
    new["estimator"] = {"queries": settings.queries, "mu": settings.perturbation, "two_sided": settings.two_sided}
    new["optimizer"] = {**state["optimizer"], "lr": settings.learning_rate}
    proj = state.get("projector")
    sub = settings.subspace
    if proj is not None and (sub is None or (int(proj["tau"]), float(proj["nu"])) != (sub.tau, sub.nu)):
        new["projector"] = None  # another tau/nu: the trajectory buffer starts again
    return Embedding(resume.name, resume.vectors, dict(resume.metadata), state=new)


def _progress_text(text: str, node_id) -> None:
    try:
        from server import PromptServer

        server = getattr(PromptServer, "instance", None)
        if server is not None and node_id is not None:
            server.send_progress_text(text, node_id)
    except Exception:  # headless runs have no server; the log line carries the same text
        pass


def _to_pil(image: torch.Tensor):
    from PIL import Image

    return Image.fromarray((image[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8))


def _save_preview(image: torch.Tensor) -> dict:
    """A preview in the temp folder, the way PreviewImage shows images in a node."""
    full, name, counter, sub, _ = folder_paths.get_save_image_path("zoodip_preview", folder_paths.get_temp_directory(), image.shape[2], image.shape[1])
    file = f"{name}_{counter:05}_.png"
    _to_pil(image).save(f"{full}/{file}")
    return {"filename": file, "subfolder": sub, "type": "temp"}
