"""ZOODiP Train Token: the node a user queues to learn a token."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import comfy.model_management as mm
import comfy.utils
import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image

from ..zoodip.embedding import Embedding, check_vectors
from ..zoodip.files import check_name
from ..zoodip.settings import SETTINGS, TrainSettings, check
from ..zoodip.templates import parse_templates
from ..zoodip.trainer import NonFiniteLossError, NothingLearnedError, check_state
from . import host, training
from .common import check_links, check_saves_before_training, save_snapshot, snapshot_name, temp_image
from .schema import Embedding as EmbeddingType
from .schema import Loss, Puts, Subspace, legacy, widget

log = logging.getLogger("zoodip")

_T = {
    "model": "The diffusion model from your checkpoint loader (or Quantize Model), at whatever precision it was loaded. Its weights are only read.",
    "clip": "The CLIP from the same checkpoint; its own encoder runs the prompts, so the token is learned for exactly what sampling will see.",
    "vae": "The VAE from the same checkpoint; it encodes the photos once, before the first step.",
    "images": "3-5 photos of the subject (Load Training Images, or any IMAGE batch).",
    "puts": "Optional PUTS Sampler Config: train on the middle band of timesteps. Without it, timesteps are uniform over all.",
    "subspace": "Optional Subspace Projector: denoise the gradient estimates with the token's own trajectory.",
    "resume": (
        "Continue from an embedding (Load Embedding). With its training state (saved by Save Embedding, save_every "
        "or Cancel) the run continues from its step to 'steps', exactly as if it had never stopped, provided the "
        "settings are the same. num_vectors and the model family must match; other changed settings apply from "
        "the resumed step on."
    ),
}

# the widgets in 0.1.0's order: UI workflows store widget values by position
REQUIRED_WIDGETS = ("token_name", "init_word", "num_vectors", "steps", "learning_rate", "queries", "perturbation", "seed")
# the optional widgets' order, with the optional sockets between them as in 0.1.0
OPTIONAL_WIDGETS = ("prompt_templates", "two_sided", "held_out_every", "save_every", "preview_every",
                    "preview_prompt", "query_batch")


class ZOODiPTrainToken(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        opt = {name: widget(name, optional=True) for name in OPTIONAL_WIDGETS}
        return io.Schema(
            node_id="ZOODiPTrainToken",
            display_name="ZOODiP Train Token",
            category="ZOODiP",
            description=(
                "Learns a new token (textual inversion) from a few photos with forward passes only (ZOODiP, "
                "arXiv 2503.14868), on the model already loaded, at sampling memory. Outputs a CLIP that "
                "understands embedding:<token_name>, the embedding, and the loss history."
            ),
            inputs=[
                io.Model.Input("model", tooltip=_T["model"]),
                io.Clip.Input("clip", tooltip=_T["clip"]),
                io.Vae.Input("vae", tooltip=_T["vae"]),
                io.Image.Input("images", tooltip=_T["images"]),
                *(widget(name) for name in REQUIRED_WIDGETS),
                Puts.Input("puts", optional=True, tooltip=_T["puts"]),
                Subspace.Input("subspace", optional=True, tooltip=_T["subspace"]),
                opt["prompt_templates"],
                EmbeddingType.Input("resume", optional=True, tooltip=_T["resume"]),
                *(opt[name] for name in OPTIONAL_WIDGETS[1:]),
            ],
            outputs=[
                io.Clip.Output(display_name="clip", tooltip="A copy of the input CLIP that resolves embedding:<token_name> to the trained vectors (nothing is saved)."),
                EmbeddingType.Output(display_name="embedding", tooltip="The trained token; connect Save Embedding to keep it."),
                Loss.Output(display_name="loss", tooltip="The clean loss of every step (and the held-out loss, if enabled)."),
                io.Image.Output(display_name="previews", tooltip="The preview images, one per preview_every steps (a black image when previews are off)."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,  # training is worth running on its own (snapshots, previews)
        )

    @classmethod
    def validate_inputs(cls, token_name):
        # Runs when the prompt is queued, before any node executes. token_name only: the host
        # attaches an error returned here to every argument, and checks the numbers' declared
        # limits itself (attached to each one) for the inputs that are not arguments. The rest
        # (init_word, the templates, non-finite floats) is checked when the node starts, before
        # any model work.
        if token_name is None:  # linked: checked when the node runs
            return True
        try:
            check_name(token_name, "token_name")
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def train(cls, *args, **kwargs):  # 0.1.0's method, for scripts that call the node directly
        return legacy(cls.execute(*args, **kwargs))

    @classmethod
    def execute(cls, model, clip, vae, images, token_name, init_word, num_vectors, steps, learning_rate, queries,
                perturbation, seed, puts=None, subspace=None, prompt_templates=SETTINGS["prompt_templates"].default,
                resume=None, two_sided=False, held_out_every=0, save_every=0, preview_every=0,
                preview_prompt=SETTINGS["preview_prompt"].default, query_batch=SETTINGS["query_batch"].default
                ) -> io.NodeOutput:
        unique_id = cls.hidden.unique_id if cls.hidden is not None else None
        prompt = cls.hidden.prompt if cls.hidden is not None else None
        check_links(model=(model, "MODEL"), clip=(clip, "CLIP"), vae=(vae, "VAE"), puts=(puts, "ZOODIP_PUTS"),
                    subspace=(subspace, "ZOODIP_SUBSPACE"), resume=(resume, "EMBEDDING"))
        settings = TrainSettings(
            token_name=token_name, init_word=init_word, num_vectors=num_vectors, steps=steps,
            learning_rate=learning_rate, queries=queries, perturbation=perturbation, seed=seed,
            two_sided=two_sided, puts=puts, subspace=subspace,
            prompt_templates=prompt_templates or SETTINGS["prompt_templates"].default,
            query_batch=SETTINGS["query_batch"].default if query_batch is None else query_batch,
        )
        # every declared limit and no inf/nan, before any model work (the host checked the
        # numbers' ranges when the prompt was queued; an API client may still send nan)
        settings.validate()
        held_out_every, save_every, preview_every = (
            check(name, 0 if value is None else value)
            for name, value in (("held_out_every", held_out_every), ("save_every", save_every),
                                ("preview_every", preview_every))
        )
        check_saves_before_training(prompt, unique_id, token_name)
        if resume is not None:
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
            path = save_snapshot(run.embedding(), run.trainer.step_count)
            saved.update(step=run.trainer.step_count, path=path)

        def on_step(r, rate):
            if r.skipped:
                log.warning("ZOODiP %s: step %d skipped: non-finite loss (%d skipped so far)",
                            token_name, r.step, run.trainer.skipped_steps)
            if save_every and r.step % save_every == 0 and training.learned_since(run, saved["step"]):
                # before the Cancel check: a scheduled save is never lost to a Cancel. Only a token some
                # step changed since the last save is written (an all-skipped stretch writes nothing).
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
        preview = training.PreviewSettings(int(preview_every or 0), preview_prompt or SETTINGS["preview_prompt"].default)

        def on_preview(step: int) -> None:
            image = training.render_preview(run, vae, preview)
            previews.append(image)
            pbar.update_absolute(step, steps, ("JPEG", _to_pil(image), 512))  # the live preview

        try:
            training.train(run, held_out_every=held_out_every, on_step=on_step,
                           preview_every=preview.every, on_preview=on_preview)
        except Exception as e:  # Cancel, non-finite losses, or anything else: keep what was learned
            _keep_what_was_learned(e, run, snapshot, saved, token_name, init_word, resume is not None, unique_id)
            raise
        emb = run.embedding()
        trained_clip = host.clip_with_embeddings(clip, {token_name: emb.vectors})
        if not previews:  # an IMAGE output must hold an image: a black one when previews are off
            return io.NodeOutput(trained_clip, emb, run.history, torch.zeros((1, 64, 64, 3)))
        result = (trained_clip, emb, run.history, torch.cat(previews))
        return io.NodeOutput(*result, ui={"images": [temp_image(_to_pil(p), "zoodip_preview_") for p in previews]})


def _keep_what_was_learned(error: Exception, run: training.Run, snapshot: Callable[[], None], saved: dict,
                           token_name: str, init_word: str, resumed: bool, unique_id: str | None) -> None:
    """After ``error`` stopped training: save the token if a step changed it since the last save, and say
    where it is; a NonFiniteLossError is raised again with that added (the caller re-raises the others)."""
    step, steps = run.trainer.step_count, run.settings.steps
    save_error = None
    if training.learned_since(run, saved["step"]):
        try:
            snapshot()
        except Exception as err:  # never hide the original error behind this one
            save_error = err
    what = "cancelled" if isinstance(error, mm.InterruptProcessingException) else "stopped by an error"
    again = type(error) if isinstance(error, NonFiniteLossError) else None
    if save_error is not None:  # steps changed the token, but it could not be written
        last = f"; the last saved token is {snapshot_name(saved['path'])}" if saved["path"] is not None else ""
        text = f"could not save the token learned since step {saved['step']}: {save_error}{last}"
        log.error("ZOODiP %s: %s at step %d of %d; %s", token_name, what, step, steps, text)
        _progress_text(f"{what} at step {step}/{steps}: {text}", unique_id)
        if again is not None:
            raise again(f"{error}. {text[:1].upper()}{text[1:]}.") from error
    elif saved["path"] is not None:  # saved now, or by save_every with nothing learned since
        name = snapshot_name(saved["path"])
        log.warning(
            "ZOODiP %s: %s at step %d of %d; the token learned so far is in %s (Load Embedding: %s; "
            "connect it to resume to continue)", token_name, what, step, steps, saved["path"], name,
        )
        _progress_text(f"{what} at step {step}/{steps}: saved {name}", unique_id)
        if again is not None:
            raise again(f"{error}. The last good token is saved as {name} (Load Embedding lists it).") from error
    else:
        log.warning("ZOODiP %s: %s at step %d of %d; no step changed the token since step %d, nothing to save",
                    token_name, what, step, steps, saved["step"])
        if again is not None and not isinstance(error, NothingLearnedError):
            raise again(
                f"{error}. No step of this run changed the token, so nothing was saved (it is still "
                f"{'the resumed embedding' if resumed else 'init_word ' + repr(init_word)})."
            ) from error


# Settings a resumed run cannot change: the token would not fit.
_FIXED = ("num_vectors",)
# Settings whose new value applies from the resumed step on (bit-exact only when unchanged).
_APPLIED = ("learning_rate", "queries", "perturbation", "two_sided", "seed", "puts", "subspace", "prompt_templates")


def _stored_settings(resume: Embedding) -> dict:
    text = (resume.state or {}).get("settings") or resume.metadata.get("zoodip.settings") or ""
    try:
        stored = json.loads(text) if text else {}
    except ValueError:
        stored = {}
    return stored if isinstance(stored, dict) else {}


def _current(settings: TrainSettings) -> dict:
    return json.loads(settings.to_metadata()["zoodip.settings"])


def _same(key: str, stored: Any, current: Any) -> bool:
    if key == "prompt_templates":  # "" and the default text are the same templates
        return _templates(stored) == _templates(current)
    return stored == current


def _templates(text: Any) -> Any:
    try:
        return parse_templates(text or "")
    except (ValueError, TypeError, AttributeError):  # a damaged record compares as written
        return text


def check_resume(resume: Embedding, settings: TrainSettings, family: host.Family) -> Embedding:
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
    changed = [k for k in _APPLIED if k in stored and not _same(k, stored[k], current[k])]
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


def _to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8))
