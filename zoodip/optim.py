"""The paper's optimizer, ``torch.optim.Adam``, and how its state is kept in a ``.zoodip-state`` file.

The trainer steps a plain ``torch.optim.Adam`` over the token (so schedulers and the rest of the
``torch.optim`` tooling apply). Training-state files keep the optimizer in a small layout of their
own, the one ZOODiP 0.1.0 wrote, ``{lr, betas, eps, t, exp_avg, exp_avg_sq}``: torch's
``state_dict()`` layout (parameter ids, per-version flags such as ``foreach``/``fused``) is not a file
format, and keeping 0.1.0's means the states it wrote resume as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .settings import SETTINGS

# The paper's values. eps is large because ZO estimates are noisy: a small eps would turn rare
# near-zero second moments into huge steps.
PAPER_BETAS = (0.9, 0.999)
PAPER_EPS = 1e-3
STATE_KEYS = ("lr", "betas", "eps", "t", "exp_avg", "exp_avg_sq")


def paper_adam(theta: torch.Tensor, lr: float = SETTINGS["learning_rate"].default) -> torch.optim.Adam:
    """``torch.optim.Adam`` over ``theta`` with the paper's betas and eps.

    The single-tensor path (``foreach``/``fused``/``capturable`` off) is pinned, so a run does the
    same arithmetic whatever torch would pick for the device. The moments have ``theta``'s dtype:
    the trainer keeps the token in float32.
    """
    if not lr > 0:
        raise ValueError(f"learning_rate must be > 0, got {lr}")
    return torch.optim.Adam([theta], lr=lr, betas=PAPER_BETAS, eps=PAPER_EPS, foreach=False, fused=False,
                            capturable=False)


def only_param(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """The one tensor ``optimizer`` updates; ValueError if it has more or none."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if len(params) != 1:
        raise ValueError(f"the optimizer must update exactly one tensor (the token), it has {len(params)}")
    return params[0]


def adam_state(optimizer: torch.optim.Adam) -> dict:
    """The optimizer's state in the file layout (``STATE_KEYS``; moments as float32 on the CPU)."""
    if not isinstance(optimizer, torch.optim.Adam):
        raise TypeError(f"training states hold torch.optim.Adam's state, not {type(optimizer).__name__}'s")
    param = only_param(optimizer)
    group = optimizer.param_groups[0]
    s = optimizer.state.get(param, {})
    zeros = torch.zeros(param.shape, dtype=torch.float32)
    return {
        "lr": float(group["lr"]),
        "betas": [float(group["betas"][0]), float(group["betas"][1])],
        "eps": float(group["eps"]),
        "t": int(s["step"]) if "step" in s else 0,
        "exp_avg": s["exp_avg"].detach().to("cpu", torch.float32).clone() if "exp_avg" in s else zeros,
        "exp_avg_sq": s["exp_avg_sq"].detach().to("cpu", torch.float32).clone() if "exp_avg_sq" in s else zeros.clone(),
    }


def check_adam_state(state: object, shape: tuple[int, ...]) -> None:
    """ValueError saying why ``state`` (file layout) cannot continue an Adam over a tensor of ``shape``."""
    if not isinstance(state, Mapping) or not any(k in state for k in STATE_KEYS):
        have = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(
            f"the optimizer part of the training state is not Adam's {list(STATE_KEYS)} (found {have}): it was not "
            "written by this version of ZOODiP. Load the embedding without its .zoodip-state to train on from its vectors"
        )
    missing = [k for k in ("exp_avg", "exp_avg_sq", "t", "lr", "betas", "eps") if k not in state]  # moments first
    if missing:  # Adam's layout with a part gone: damaged (check_state says "it is damaged (no 'exp_avg')")
        raise ValueError(f"no {missing[0]!r}")
    for k in ("exp_avg", "exp_avg_sq"):
        t = state[k]
        if not torch.is_tensor(t) or tuple(t.shape) != tuple(shape):
            got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"optimizer state is for shape {got}, the token has {tuple(shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"it holds NaN or infinite values (optimizer/{k}): the state is damaged; resume without it")
    b1, b2 = (float(b) for b in state["betas"])
    if not (0 <= b1 < 1 and 0 <= b2 < 1) or not float(state["eps"]) >= 0 or not float(state["lr"]) > 0 or int(state["t"]) < 0:
        raise ValueError(f"the optimizer state has impossible values (lr {state['lr']}, betas {state['betas']}, "
                         f"eps {state['eps']}, t {state['t']}): the state is damaged; resume without it")


def load_adam_state(optimizer: torch.optim.Adam, state: Mapping) -> None:
    """Put a file-layout state (0.1.0's or ours) into ``optimizer``, as torch's own ``load_state_dict`` does."""
    param = only_param(optimizer)
    check_adam_state(state, tuple(param.shape))
    group = optimizer.param_groups[0]
    group["lr"] = float(state["lr"])
    group["betas"] = (float(state["betas"][0]), float(state["betas"][1]))
    group["eps"] = float(state["eps"])
    optimizer.state.pop(param, None)
    if int(state["t"]) == 0:
        return  # no step taken: Adam starts its moments itself
    # torch's own layout for one parameter: the step count is a float32 scalar tensor (exact up to 2**24)
    optimizer.state[param] = {
        "step": torch.tensor(float(state["t"]), dtype=torch.float32),
        "exp_avg": state["exp_avg"].to(device=param.device, dtype=param.dtype).clone(),
        "exp_avg_sq": state["exp_avg_sq"].to(device=param.device, dtype=param.dtype).clone(),
    }
