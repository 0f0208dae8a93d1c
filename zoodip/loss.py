"""The textual-inversion denoising loss, written against duck-typed host pieces.

The host supplies three things and the engine stays free of any host import:
- ``encode(thetas, template) -> cond``: the text encoder run on a batch of token values
  (B, V, D) spliced into prompt template number ``template``; ``cond`` is opaque here.
- ``denoise(x_t, sigma, cond) -> x0_hat``: the model's denoised prediction for one noisy latent
  (1, C, H, W) at ``sigma`` (1,) under each of the B conditionings, shape (B, C, H, W).
- ``sampling``: the model's own sampling object, with ``sigma(t)``, ``noise_scaling(sigma, noise,
  latent)`` and ``calculate_denoised(sigma, model_output, model_input)`` (ComfyUI's
  ``model_sampling`` has exactly these).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .seeds import derive_seed, generator
from .timesteps import PUTSSampler

Encode = Callable[[torch.Tensor, int], Any]
Denoise = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass
class Draw:
    """The common random numbers of one step: every query of the step sees the same draw."""

    image: int
    template: int
    timestep: int
    noise: torch.Tensor  # (1, C, H, W), float32, CPU


class DenoisingLoss:
    """L(theta) = w(sigma) * mean || x0_hat(x_t, sigma, c(theta)) - x0 ||^2.

    w(sigma) = 1 / b(sigma)^2 where x0_hat = a*x_t + b*model_output is the sampling object's own
    parameterization, so the loss is the MSE of the model's native output (eps for EPS models,
    v for v-prediction) without naming the prediction type.

    With ``teacher`` set, the target is the model's own prediction under the hidden token
    ``teacher`` instead of x0: a loss that is exactly 0 at the teacher, for benchmarks and tests.
    """

    def __init__(
        self,
        latents: torch.Tensor,
        encode: Encode,
        denoise: Denoise,
        sampling: Any,
        num_templates: int,
        timesteps: PUTSSampler,
        max_batch: int | None = None,
        teacher: torch.Tensor | None = None,
    ) -> None:
        if latents.ndim != 4 or latents.shape[0] < 1:
            raise ValueError(f"expected reference latents of shape (N, C, H, W) with N >= 1, got {tuple(latents.shape)}")
        if num_templates < 1:
            raise ValueError("at least one prompt template is needed")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.latents = latents
        self.encode = encode
        self.denoise = denoise
        self.sampling = sampling
        self.num_templates = int(num_templates)
        self.timesteps = timesteps
        self.max_batch = max_batch
        self.teacher = teacher
        self.evaluations = 0  # rows evaluated (text encoder + UNet passes at batch 1 equivalents)

    def draw(self, seed: int) -> Draw:
        g = generator(seed)
        image = int(torch.randint(self.latents.shape[0], (1,), generator=g))
        template = int(torch.randint(self.num_templates, (1,), generator=g))
        t = int(self.timesteps.sample(g))
        noise = torch.randn((1, *self.latents.shape[1:]), generator=g, dtype=torch.float32)
        return Draw(image, template, t, noise)

    def _chunks(self, thetas: torch.Tensor) -> list[torch.Tensor]:
        if self.max_batch is None or thetas.shape[0] <= self.max_batch:
            return [thetas]
        return list(thetas.split(self.max_batch))

    def _predict(self, thetas: torch.Tensor, d: Draw, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        outs = []
        for chunk in self._chunks(thetas):
            cond = self.encode(chunk, d.template)
            outs.append(self.denoise(x_t, sigma, cond).float())
            self.evaluations += chunk.shape[0]
        return torch.cat(outs)

    def __call__(self, thetas: torch.Tensor, seed: int) -> torch.Tensor:
        d = self.draw(seed)
        x0 = self.latents[d.image : d.image + 1].float()
        sigma = self.sampling.sigma(torch.tensor([d.timestep], device=x0.device)).to(device=x0.device, dtype=torch.float32)
        noise = d.noise.to(x0.device)
        x_t = self.sampling.noise_scaling(sigma, noise, x0)
        if self.teacher is not None:
            thetas = torch.cat([thetas, self.teacher.to(thetas).unsqueeze(0)])
        pred = self._predict(thetas, d, x_t, sigma)
        if self.teacher is not None:
            pred, target = pred[:-1], pred[-1:]
        else:
            target = x0
        # b(sigma): how much x0_hat moves per unit of the model's raw output
        b = self.sampling.calculate_denoised(sigma, torch.ones_like(x0), torch.zeros_like(x0)).float()
        err = (pred - target) / b
        return err.square().mean(dim=tuple(range(1, err.ndim))).cpu()


def held_out_loss(loss_fn: Callable[[torch.Tensor, int], torch.Tensor], theta: torch.Tensor, seed: int, draws: int = 8) -> float:
    """Mean clean loss of ``theta`` over ``draws`` fixed draws (fixed images, noise, timesteps).

    Unlike the per-step clean loss this does not move with the training draws, so it is the
    number to watch for progress.
    """
    total = 0.0
    for i in range(draws):
        total += float(loss_fn(theta.unsqueeze(0), derive_seed(seed, 0x5EED, i))[0])
    return total / draws
