"""Subspace Gradient (SG): denoise ZO estimates with the token's own trajectory."""

from __future__ import annotations

import torch


class SubspaceProjector:
    """Projects the low-variance directions of the token's recent trajectory out of each estimate.

    Keeps the last ``tau`` token values. Every ``tau`` observations it standardizes that buffer per
    dimension, takes its SVD, keeps the top directions that explain more than ``1 - nu`` of the
    variance, and treats the rest (the low-variance ones) as noise directions until the next refresh.
    Before the first refresh it passes estimates through unchanged.
    Paper's best values: tau = 128, nu = 1e-3.
    """

    def __init__(self, tau: int = 128, nu: float = 1e-3) -> None:
        if tau < 2:
            raise ValueError(f"tau must be at least 2 (it is the number of trajectory points per SVD), got {tau}")
        if not 0 < nu < 1:
            raise ValueError(f"nu must be strictly between 0 and 1 (a variance fraction), got {nu}")
        self.tau = int(tau)
        self.nu = float(nu)
        self.buffer: torch.Tensor | None = None  # (tau, D) float64, a ring
        self.count = 0  # observations so far
        self.noise_basis: torch.Tensor | None = None  # (k, D) orthonormal rows, or None
        self.refreshes = 0

    def observe(self, theta: torch.Tensor) -> None:
        """Record one trajectory point; refresh the basis every tau points."""
        flat = theta.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
        if self.buffer is None:
            self.buffer = torch.zeros((self.tau, flat.numel()), dtype=torch.float64)
        elif self.buffer.shape[1] != flat.numel():
            raise ValueError(f"token size changed from {self.buffer.shape[1]} to {flat.numel()}")
        self.buffer[self.count % self.tau] = flat
        self.count += 1
        if self.count % self.tau == 0:
            self._refresh()

    def _refresh(self) -> None:
        x = self.buffer
        mean = x.mean(dim=0, keepdim=True)
        std = x.std(dim=0, keepdim=True).clamp_min(1e-12)  # a dimension that never moved is not noise
        _, s, vh = torch.linalg.svd((x - mean) / std, full_matrices=False)
        energy = s.square()
        total = energy.sum()
        if not total > 0:
            self.noise_basis = None
            return
        ratio = torch.cumsum(energy, 0) / total
        # i*: the smallest number of leading directions whose explained variance exceeds 1 - nu
        keep = int(torch.searchsorted(ratio, torch.tensor([1.0 - self.nu], dtype=ratio.dtype), right=True)) + 1
        keep = min(keep, vh.shape[0])
        self.noise_basis = vh[keep:].contiguous() if keep < vh.shape[0] else None
        self.refreshes += 1

    @property
    def num_noise_directions(self) -> int:
        return 0 if self.noise_basis is None else int(self.noise_basis.shape[0])

    def project(self, grad: torch.Tensor) -> torch.Tensor:
        """``grad`` with the current noise directions removed (same shape, dtype and device)."""
        if self.noise_basis is None:
            return grad
        g = grad.reshape(-1).to(device="cpu", dtype=torch.float64)
        g = g - self.noise_basis.T @ (self.noise_basis @ g)
        return g.reshape(grad.shape).to(device=grad.device, dtype=grad.dtype)

    def state_dict(self) -> dict:
        return {
            "tau": self.tau,
            "nu": self.nu,
            "count": self.count,
            "refreshes": self.refreshes,
            "buffer": None if self.buffer is None else self.buffer.clone(),
            "noise_basis": None if self.noise_basis is None else self.noise_basis.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.__init__(state["tau"], state["nu"])
        self.count = int(state["count"])
        self.refreshes = int(state.get("refreshes", 0))
        self.buffer = None if state["buffer"] is None else state["buffer"].to(torch.float64).clone()
        self.noise_basis = None if state["noise_basis"] is None else state["noise_basis"].to(torch.float64).clone()
