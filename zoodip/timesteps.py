"""Timestep samplers: PUTS (partial uniform) and the plain uniform one."""

from __future__ import annotations

import torch

from .settings import SETTINGS


class PUTSSampler:
    """Partial Uniform Timestep Sampling: t ~ U[t_min, t_max) of the model's training timesteps.

    Small t carries little information about the concept and large t is nearly pure noise; ZO
    estimates are too noisy to spend queries there (paper: [500, 900) of 1000; SDXL upper end 700).
    ``PUTSSampler.uniform(T)`` is the sampler without PUTS: all of [0, T).
    """

    def __init__(self, t_min: int = SETTINGS["t_min"].default, t_max: int = SETTINGS["t_max"].default,
                 num_train_timesteps: int = 1000) -> None:
        if not 0 <= t_min < t_max <= num_train_timesteps:
            raise ValueError(
                f"PUTS needs 0 <= t_min < t_max <= {num_train_timesteps}, got t_min={t_min}, t_max={t_max}; "
                f"set t_min below t_max (t_min: {SETTINGS['t_min'].paper_text()}; t_max: {SETTINGS['t_max'].paper_text()})"
            )
        self.t_min = int(t_min)
        self.t_max = int(t_max)
        self.num_train_timesteps = int(num_train_timesteps)

    @classmethod
    def uniform(cls, num_train_timesteps: int = 1000) -> PUTSSampler:
        return cls(0, num_train_timesteps, num_train_timesteps)

    def sample(self, gen: torch.Generator, k: int = 1) -> torch.Tensor:
        """k integer timesteps (int64, CPU)."""
        return torch.randint(self.t_min, self.t_max, (k,), generator=gen)

    def state_dict(self) -> dict:
        return {"t_min": self.t_min, "t_max": self.t_max, "num_train_timesteps": self.num_train_timesteps}

    def load_state_dict(self, state: dict) -> None:
        self.__init__(state["t_min"], state["t_max"], state["num_train_timesteps"])
