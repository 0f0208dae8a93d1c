"""One training run: the host's objects wired to the engine's pieces.

Shared by the Train Token node and the command-line runner, so both train the same way.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..zoodip.embedding import Embedding
from ..zoodip.estimator import RandomGradientEstimator
from ..zoodip.images import MIN_SIDE, rgb_batch
from ..zoodip.loss import DenoisingLoss, held_out_loss
from ..zoodip.optim import paper_adam
from ..zoodip.projector import SubspaceProjector
from ..zoodip.seeds import derive_seed
from ..zoodip.settings import SETTINGS, TrainSettings
from ..zoodip.timesteps import PUTSSampler
from ..zoodip.trainer import NothingLearnedError, StepResult, ZOTrainer
from . import host

if TYPE_CHECKING:  # the host's classes, for the hints only
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import CLIP, VAE

log = logging.getLogger("zoodip")

HELD_OUT_DRAWS = 4


@dataclass
class LossHistory:
    """What the ZOODIP_LOSS output carries: the clean loss per step and the held-out loss."""

    token_name: str
    loss: list[float] = field(default_factory=list)
    held_out: list[tuple[int, float]] = field(default_factory=list)
    skipped_steps: int = 0


@dataclass
class Run:
    """A prepared run: everything validated and built, nothing trained yet."""

    settings: TrainSettings
    family: host.Family
    trainer: ZOTrainer
    loss_fn: DenoisingLoss
    model: object
    clip: object
    history: LossHistory

    def embedding(self) -> Embedding:
        """The token as it is now, with its metadata and the training state an exact resume needs."""
        theta = self.trainer.theta.detach().to("cpu", torch.float32)
        parts = theta.split(list(self.family.dims), dim=-1)
        vectors = {k: p.clone() for k, p in zip(self.family.encoders, parts)}
        meta = {
            **self.settings.to_metadata(),
            "zoodip.family": self.family.name,
            "zoodip.step": str(self.trainer.step_count),
        }
        # the settings and family go in the training state too: a resume checks them
        state = {**self.trainer.state_dict(), "settings": meta.get("zoodip.settings", ""), "family": self.family.name}
        return Embedding(self.settings.token_name, vectors, meta, state=state)

    def held_out(self) -> float:
        # fixed draws: the same images, noise and timesteps at every evaluation of this run
        return held_out_loss(self.loss_fn, self.trainer.theta, derive_seed(self.settings.seed, 0xE7A1), HELD_OUT_DRAWS)


def prepare(
    model: ModelPatcher,
    clip: CLIP,
    vae: VAE,
    images: torch.Tensor,
    settings: TrainSettings,
    resume: Embedding | None = None,
) -> Run:
    """Validate everything cheap first, then encode the references once and build the trainer."""
    templates = settings.validate()
    if images is None or (torch.is_tensor(images) and images.ndim == 4 and images.shape[0] == 0):
        raise ValueError("no training images: connect 3-5 photos of the subject (Load Training Images or Load Image)")
    # the smallest latent the UNet handles is 8x8: 64 px through an SD VAE (x8), 32 px through an x4 one
    # (the toy model of benchmarks/toymodel and its shipped workflow train at 32 px)
    ratio = getattr(vae, "downscale_ratio", 8)
    images = rgb_batch(images, "images", MIN_SIDE * ratio // 8 if isinstance(ratio, int) else MIN_SIDE)
    family = host.detect_family(model, clip)
    if settings.puts is not None and settings.puts.t_max > family.num_train_timesteps:
        # refused, not clamped: the message quotes the user's value
        raise ValueError(
            f"PUTS t_max is {settings.puts.t_max}, but this {family.name} model has {family.num_train_timesteps} "
            f"training timesteps: set t_max to at most {family.num_train_timesteps}"
        )
    if settings.perturbation != family.paper_mu:
        log.info("ZOODiP: the paper used perturbation (mu) %g for %s; this run uses %g", family.paper_mu, family.name, settings.perturbation)
    if settings.puts is not None and settings.puts.t_max != family.paper_t_max:
        log.info("ZOODiP: the paper used PUTS t_max %d for %s; this run uses %d", family.paper_t_max, family.name, settings.puts.t_max)
    if resume is not None:
        resumed = resume.for_encoders(list(family.encoders))
        if next(iter(resumed.values())).shape[0] != settings.num_vectors:
            raise ValueError(
                f"resume has {resume.num_vectors} vectors but num_vectors is {settings.num_vectors}: make them equal"
            )
        theta0 = torch.cat([resumed[k].float() for k in family.encoders], dim=-1)
    else:
        vecs = host.init_vectors(clip, family, settings.init_word, settings.num_vectors)
        theta0 = torch.cat([vecs[k] for k in family.encoders], dim=-1)
    if theta0.shape[-1] != sum(family.dims):
        raise ValueError(f"the token has width {theta0.shape[-1]} but {family.name} needs {sum(family.dims)}")
    text = host.TokenTextEncoder(clip, family, templates, settings.num_vectors)

    device = model.load_device
    theta = theta0.to(device=device, dtype=torch.float32).clone()
    latents = host.encode_references(model, vae, images)
    if settings.puts is not None:
        timesteps = PUTSSampler(settings.puts.t_min, settings.puts.t_max, family.num_train_timesteps)
    else:
        timesteps = PUTSSampler.uniform(family.num_train_timesteps)
    loss_fn = DenoisingLoss(
        latents,
        text,
        host.HostDenoiser(model),
        model.get_model_object("model_sampling"),
        len(templates),
        timesteps,
        max_batch=settings.query_batch or None,
    )
    estimator = RandomGradientEstimator(settings.queries, settings.perturbation, settings.two_sided)
    optimizer = paper_adam(theta, lr=settings.learning_rate)
    projector = SubspaceProjector(settings.subspace.tau, settings.subspace.nu) if settings.subspace else None
    trainer = ZOTrainer(theta, loss_fn, estimator, optimizer, projector, seed=settings.seed)
    history = LossHistory(settings.token_name)
    if resume is not None and resume.state is not None:
        trainer.load_state_dict(resume.state)
        history.loss = list(trainer.history)
    return Run(settings, family, trainer, loss_fn, model, clip, history)


@dataclass
class PreviewSettings:
    """Every ``every`` steps, sample a small image with the current token (fixed seed)."""

    every: int
    prompt: str = SETTINGS["preview_prompt"].default
    steps: int = 8
    cfg: float = 5.0
    seed: int = 0


def render_preview(run: Run, vae, preview: PreviewSettings) -> torch.Tensor:
    """One image (1, H, W, 3) sampled with the token as it is now, at the photos' size."""
    import comfy.sample

    name = run.settings.token_name
    clip = host.clip_with_embeddings(run.clip, {name: run.embedding().vectors})
    text = preview.prompt.replace("{token}", f"embedding:{name}")
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    latents = run.loss_fn.latents
    latent = torch.zeros((1, *latents.shape[1:]), dtype=torch.float32)
    noise = comfy.sample.prepare_noise(latent, preview.seed)
    samples = comfy.sample.sample(
        run.model, noise, preview.steps, preview.cfg, "euler", "normal", positive, negative, latent,
        disable_pbar=True, seed=preview.seed,
    )
    return vae.decode(samples)[:1, :, :, :3].float().cpu()


def train(
    run: Run,
    held_out_every: int = 0,
    on_step: Callable[[StepResult, float], None] | None = None,
    preview_every: int = 0,
    on_preview: Callable[[int], None] | None = None,
) -> Run:
    """Run to ``settings.steps``. ``on_step(result, steps_per_second)`` may raise to stop (Cancel).

    With ``preview_every``, training pauses every that many steps and ``on_preview(step)`` runs
    outside the training session, so it may sample with the same model the way the sampler does.
    """
    s = run.settings
    t0, first = time.perf_counter(), run.trainer.step_count

    def callback(r: StepResult) -> None:
        run.history.loss.append(r.loss)
        run.history.skipped_steps = run.trainer.skipped_steps
        if held_out_every and (r.step % held_out_every == 0 or r.step == s.steps):
            run.history.held_out.append((r.step, run.held_out()))
        rate = (r.step - first) / max(time.perf_counter() - t0, 1e-9)
        if on_step is not None:
            on_step(r, rate)

    if held_out_every and run.trainer.step_count == 0:
        with host.sampling_session(run.model, run.clip):
            run.history.held_out.append((0, run.held_out()))
    while run.trainer.step_count < s.steps:
        stop = s.steps
        if preview_every and on_preview is not None:
            stop = min(s.steps, (run.trainer.step_count // preview_every + 1) * preview_every)
        with host.sampling_session(run.model, run.clip):
            run.trainer.run(stop, callback)
        if preview_every and on_preview is not None and stop % preview_every == 0:
            on_preview(stop)
    if run.trainer.step_count > first and not learned_since(run, first):
        raise NothingLearnedError(
            f"all {run.trainer.step_count - first} steps of this run gave non-finite losses (NaN/inf) and were skipped: "
            "the token was not trained, so nothing is returned or saved. Check the model (an fp8 overflow or broken "
            "weights), or lower the perturbation"
        )
    return run


def learned_since(run: Run, step: int) -> bool:
    """True when a step after ``step`` changed the token (skipped steps leave NaN in the history)."""
    return any(not math.isnan(x) for x in run.trainer.history[step:])
