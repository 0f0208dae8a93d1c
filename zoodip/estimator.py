"""Random gradient estimate (RGE) from loss values only."""

from __future__ import annotations

import torch

from .seeds import generator


class RandomGradientEstimator:
    """Zeroth-order gradient estimate from n random directions.

    One-sided (the paper's):  g = 1/n * sum_i (L(theta + mu*u_i) - L(theta)) / mu * u_i
    Two-sided (option):       g = 1/n * sum_i (L(theta + mu*u_i) - L(theta - mu*u_i)) / (2*mu) * u_i
    with u_i ~ N(0, I). The directions are never stored: they are regenerated from the step's seed
    (MeZO's trick), so ``queries`` and ``estimate`` only have to agree on the seed.
    """

    def __init__(self, queries: int = 1, mu: float = 1e-3, two_sided: bool = False) -> None:
        if queries < 1:
            raise ValueError(f"queries (n) must be at least 1, got {queries}")
        if not mu > 0:
            raise ValueError(f"perturbation (mu) must be > 0, got {mu}")
        self.n = int(queries)
        self.mu = float(mu)
        self.two_sided = bool(two_sided)

    @property
    def num_evaluations(self) -> int:
        """Loss evaluations per step: n+1 one-sided, 2n two-sided."""
        return 2 * self.n if self.two_sided else self.n + 1

    def directions(self, shape: torch.Size, seed: int) -> torch.Tensor:
        """The n directions of a step, shape (n, *shape), float32 on the CPU."""
        return torch.randn((self.n, *shape), generator=generator(seed), dtype=torch.float32)

    def queries(self, theta: torch.Tensor, seed: int) -> torch.Tensor:
        """The points to evaluate, shape (num_evaluations, *theta.shape).

        One-sided: row 0 is theta itself (its loss is the step's clean loss), rows 1..n theta+mu*u_i.
        Two-sided: rows 0..n-1 are theta+mu*u_i, rows n..2n-1 theta-mu*u_i.
        """
        u = self.directions(theta.shape, seed).to(device=theta.device, dtype=theta.dtype)
        base = theta.unsqueeze(0)
        if self.two_sided:
            return torch.cat([base + self.mu * u, base - self.mu * u])
        return torch.cat([base, base + self.mu * u])

    def estimate(self, losses: torch.Tensor, theta: torch.Tensor, seed: int) -> torch.Tensor:
        """g_hat from the losses of ``queries(theta, seed)``, same shape as theta (float32)."""
        losses = losses.detach().to(device="cpu", dtype=torch.float64)
        if losses.shape != (self.num_evaluations,):
            raise ValueError(f"expected {self.num_evaluations} losses, got shape {tuple(losses.shape)}")
        if self.two_sided:
            coeff = (losses[: self.n] - losses[self.n :]) / (2 * self.mu)
        else:
            coeff = (losses[1:] - losses[0]) / self.mu
        u = self.directions(theta.shape, seed).to(torch.float64)
        g = torch.tensordot(coeff, u, dims=1) / self.n
        return g.to(device=theta.device, dtype=torch.float32)

    def clean_loss(self, losses: torch.Tensor) -> float:
        """L(theta) from the evaluations the step made anyway (two-sided: the pair mean, O(mu^2))."""
        if self.two_sided:
            return float(losses.double().mean())
        return float(losses[0])

    def state_dict(self) -> dict:
        return {"queries": self.n, "mu": self.mu, "two_sided": self.two_sided}

    def load_state_dict(self, state: dict) -> None:
        self.__init__(state["queries"], state["mu"], state["two_sided"])
