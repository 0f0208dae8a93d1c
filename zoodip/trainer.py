"""The ZO training loop: estimator -> (projector) -> optimizer, on any loss of the token vectors."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .embedding import MAX_ABS_VALUE
from .estimator import RandomGradientEstimator
from .optim import adam_state, check_adam_state, load_adam_state, only_param, paper_adam
from .projector import SubspaceProjector
from .seeds import derive_seed
from .settings import SETTINGS


class BatchLoss(Protocol):
    """Loss of a batch of token values that share one draw of data and noise.

    ``thetas`` has shape (B, *token_shape); ``seed`` fixes everything random in the evaluation
    (image, template, noise, timestep) so all B values see the same draw (common random numbers).
    Returns B losses.
    """

    def __call__(self, thetas: torch.Tensor, seed: int) -> torch.Tensor: ...


@dataclass
class StepResult:
    step: int  # steps completed, counting this one
    loss: float  # clean loss L(theta) of this step's draw (nan when skipped)
    skipped: bool = False  # non-finite losses: no update was made


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive steps with non-finite losses."""


class NothingLearnedError(NonFiniteLossError):
    """Raised when every step of a run was skipped: the token is still its starting value."""


class DivergedError(NonFiniteLossError):
    """Raised when an update would make the token non-finite or absurdly large; the token keeps
    its last good value (and the optimizer its state)."""


class ZOTrainer:
    """Trains ``theta`` in place with forward evaluations of ``loss_fn`` only.

    Per step k: seed_k = derive(seed, k); evaluate the estimator's queries around theta in one
    batch; g = estimate; optionally record theta in the projector and project g; g becomes theta's
    ``.grad`` for one ``optimizer.step()`` (a ``torch.optim.Adam`` over theta, see ``optim.paper_adam``).
    All randomness derives from (seed, k), so stopping at k and resuming gives the identical run.
    """

    def __init__(
        self,
        theta: torch.Tensor,
        loss_fn: BatchLoss,
        estimator: RandomGradientEstimator,
        optimizer: torch.optim.Adam,
        projector: SubspaceProjector | None = None,
        seed: int = 0,
        max_bad_steps: int = 5,
    ) -> None:
        if only_param(optimizer) is not theta:
            raise ValueError("the optimizer must update the same tensor the trainer trains")
        self.theta = theta
        self.loss_fn = loss_fn
        self.estimator = estimator
        self.optimizer = optimizer
        self.projector = projector
        self.seed = int(seed)
        self.max_bad_steps = int(max_bad_steps)
        self.step_count = 0
        self.skipped_steps = 0
        self._bad_in_a_row = 0
        self.history: list[float] = []  # clean loss per step (nan for a skipped step)

    @torch.no_grad()
    def step(self) -> StepResult:
        k = self.step_count
        dir_seed = derive_seed(self.seed, k, 1)
        data_seed = derive_seed(self.seed, k, 2)
        queries = self.estimator.queries(self.theta, dir_seed)
        losses = self.loss_fn(queries, data_seed).detach().float().cpu()
        self.step_count += 1
        grad = self.estimator.estimate(losses, self.theta, dir_seed) if bool(torch.isfinite(losses).all()) else None
        if grad is None or not bool(torch.isfinite(grad).all()):  # (an inf estimate: finite losses over a tiny mu)
            self.skipped_steps += 1
            self._bad_in_a_row += 1
            self.history.append(math.nan)
            if self._bad_in_a_row >= self.max_bad_steps:
                raise NonFiniteLossError(
                    f"{self._bad_in_a_row} steps in a row gave non-finite losses (NaN/inf); the token was "
                    "kept at its last good value. Check the model (an fp8 overflow or broken weights), or "
                    "lower the perturbation"
                )
            return StepResult(self.step_count, math.nan, skipped=True)
        self._bad_in_a_row = 0
        # kept to undo a step that would blow the token up (the optimizer's moments and the projector's
        # trajectory included: a resume re-runs the step, and must not observe theta twice)
        before, optimizer_before = self.theta.clone(), adam_state(self.optimizer)
        projector_before = None if self.projector is None else self.projector.state_dict()
        if self.projector is not None:
            self.projector.observe(self.theta)
            grad = self.projector.project(grad)
        self.theta.grad = grad.to(device=self.theta.device, dtype=self.theta.dtype)
        try:
            self.optimizer.step()
        finally:
            self.theta.grad = None  # the estimate is this step's only: nothing accumulates
        biggest = float(self.theta.abs().max()) if bool(torch.isfinite(self.theta).all()) else math.inf
        if biggest > MAX_ABS_VALUE:
            self.theta.copy_(before)
            load_adam_state(self.optimizer, optimizer_before)
            if self.projector is not None:
                self.projector.load_state_dict(projector_before)
            self.step_count = k
            raise DivergedError(
                f"step {k + 1} would move the token to values up to {biggest:.3g} (beyond {MAX_ABS_VALUE:g}, where a "
                "half-precision text encoder overflows): the learning_rate is far too large; the token was kept at "
                f"its last good value. Lower the learning_rate ({SETTINGS['learning_rate'].paper_text()})"
            )
        clean = self.estimator.clean_loss(losses)
        self.history.append(clean)
        return StepResult(self.step_count, clean)

    def run(self, steps: int, callback: Callable[[StepResult], None] | None = None) -> list[StepResult]:
        """Steps until ``step_count == steps`` (a total, so a resumed trainer continues to it)."""
        results = []
        while self.step_count < steps:
            r = self.step()
            results.append(r)
            if callback is not None:
                callback(r)
        return results

    def state_dict(self) -> dict:
        return {
            "theta": self.theta.detach().cpu().clone(),
            "seed": self.seed,
            "step": self.step_count,
            "skipped_steps": self.skipped_steps,
            "bad_in_a_row": self._bad_in_a_row,
            "history": list(self.history),
            "estimator": self.estimator.state_dict(),
            "optimizer": adam_state(self.optimizer),
            "projector": None if self.projector is None else self.projector.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["theta"].shape) != tuple(self.theta.shape):
            raise ValueError(
                f"the saved state is for a token of shape {tuple(state['theta'].shape)}, "
                f"this run trains {tuple(self.theta.shape)}; use the same num_vectors"
            )
        check_adam_state(state["optimizer"], tuple(self.theta.shape))  # refused before anything changes
        self.theta.copy_(state["theta"].to(device=self.theta.device, dtype=self.theta.dtype))
        self.seed = int(state["seed"])
        self.step_count = int(state["step"])
        self.skipped_steps = int(state["skipped_steps"])
        self._bad_in_a_row = int(state["bad_in_a_row"])
        self.history = [float(x) for x in state["history"]]
        self.estimator.load_state_dict(state["estimator"])
        load_adam_state(self.optimizer, state["optimizer"])
        if self.projector is not None and state["projector"] is not None:
            self.projector.load_state_dict(state["projector"])


_STATE_KEYS = ("theta", "seed", "step", "skipped_steps", "bad_in_a_row", "history", "estimator", "optimizer", "projector")


def check_state(state: Any, shape: tuple[int, ...]) -> None:
    """Raise ValueError (a sentence) unless ``state`` can resume a trainer of a token of ``shape``.

    It is loaded into scratch objects the way ``ZOTrainer.load_state_dict`` would load it, so any
    missing or malformed part is found here, not halfway through starting a run.
    """
    if not isinstance(state, dict):
        raise ValueError(f"it is not a training state (a {type(state).__name__})")
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise ValueError(f"it lacks {', '.join(missing)}")
    theta = torch.zeros(shape)
    projector = None if state["projector"] is None else SubspaceProjector()
    scratch = ZOTrainer(theta, lambda *a: None, RandomGradientEstimator(), paper_adam(theta), projector)
    try:
        scratch.load_state_dict(state)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
        detail = f"no {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"it is damaged ({detail})") from None
    bad = [name for name, t in _tensors(state) if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"it holds NaN or infinite values ({', '.join(bad)})")
    if scratch.step_count < 0 or scratch.skipped_steps < 0:
        raise ValueError(f"it is damaged (step {scratch.step_count})")


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if torch.is_tensor(obj):
        yield prefix or "state", obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}" if prefix else str(k))
