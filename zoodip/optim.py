"""Adam for zeroth-order estimates."""

from __future__ import annotations

import torch


class ZOAdam:
    """Adam on an estimated gradient, updating ``param`` in place (like torch.optim.Adam).

    Defaults are the paper's: betas (0.9, 0.999) and eps 1e-3, large because ZO estimates are
    noisy and a small eps would turn rare near-zero second moments into huge steps.
    Moments are kept in float32 whatever the parameter's dtype.
    """

    def __init__(
        self,
        param: torch.Tensor,
        lr: float = 5e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-3,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"learning_rate must be > 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.param = param
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.t = 0
        self.exp_avg = torch.zeros(param.shape, dtype=torch.float32, device=param.device)
        self.exp_avg_sq = torch.zeros(param.shape, dtype=torch.float32, device=param.device)

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.t += 1
        grad = grad.to(device=self.exp_avg.device, dtype=torch.float32)
        self.exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.exp_avg / (1 - b1**self.t)
        v_hat = self.exp_avg_sq / (1 - b2**self.t)
        update = m_hat / (v_hat.sqrt() + self.eps)
        self.param.sub_((self.lr * update).to(self.param.dtype))

    def state_dict(self) -> dict:
        return {
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
            "t": self.t,
            "exp_avg": self.exp_avg.detach().cpu().clone(),
            "exp_avg_sq": self.exp_avg_sq.detach().cpu().clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["exp_avg"].shape) != tuple(self.param.shape):
            raise ValueError(
                f"optimizer state is for shape {tuple(state['exp_avg'].shape)}, the token has {tuple(self.param.shape)}"
            )
        self.lr = float(state["lr"])
        self.betas = (float(state["betas"][0]), float(state["betas"][1]))
        self.eps = float(state["eps"])
        self.t = int(state["t"])
        self.exp_avg = state["exp_avg"].to(device=self.param.device, dtype=torch.float32).clone()
        self.exp_avg_sq = state["exp_avg_sq"].to(device=self.param.device, dtype=torch.float32).clone()
