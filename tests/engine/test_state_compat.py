"""Training states written by ZOODiP 0.1.0 (its own ``ZOAdam``), and the switch to ``torch.optim.Adam``.

``data/zoodip-0.1.0.zoodip-state`` was written by 0.1.0's code after 6 steps of ``make(7)`` below;
``data/zoodip-0.1.0-reference.safetensors`` holds 0.1.0's token after uninterrupted runs of 7, 12
and 300 steps of the same problem.

Bit for bit before and after is not possible: ``torch.optim.Adam`` computes Adam in another order
than 0.1.0's ``ZOAdam`` (``lerp`` for the first moment, the bias corrections folded into the step
size and the denominator), so one step from the same state differs in the last bit of some values
(measured from the 0.1.0 state here: 5 of 32 values, max |diff| 7.45e-9 = one ulp of a value ~0.09). A zeroth-order estimate divides loss
differences by mu (1e-3), so such a difference grows over the following steps (to ~1e-5 after 10
steps without the Subspace projector, ~1e-2 with it at tau 4, whose SVD of a short, barely moving
trajectory amplifies it further); the runs stay equally good. What is pinned: one step agrees to
the ulp, a fixed-seed run of the new path is bit for bit repeatable and resumes bit for bit, and
the long run is as good as 0.1.0's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zoodip import RandomGradientEstimator, SubspaceProjector, ZOTrainer, paper_adam
from zoodip.embedding import state_from_bytes, state_to_bytes
from zoodip.seeds import generator

DATA = Path(__file__).parent / "data"
OLD_STATE = DATA / "zoodip-0.1.0.zoodip-state"
OLD_REF = DATA / "zoodip-0.1.0-reference.safetensors"
ONE_STEP_ULPS = 2  # one Adam step from the same state: this many float32 ulps (at the token's scale) apart, at most


def make(seed: int = 7) -> ZOTrainer:
    target = torch.randn(2, 16, generator=generator(123))

    def loss(thetas, s):
        eps = 0.5 * torch.randn(1, generator=generator(s))
        return ((thetas - target) ** 2).sum(dim=(1, 2)) + eps

    theta = torch.zeros(2, 16)
    return ZOTrainer(theta, loss, RandomGradientEstimator(2, 1e-3), paper_adam(theta, lr=2e-2),
                     SubspaceProjector(4, 1e-3), seed=seed)


def old_state() -> dict:
    return state_from_bytes(OLD_STATE.read_bytes())


def test_a_state_written_by_0_1_0_resumes():
    state = old_state()
    assert sorted(state["optimizer"]) == ["betas", "eps", "exp_avg", "exp_avg_sq", "lr", "t"]  # 0.1.0's layout
    tr = make(seed=999)  # the state carries the run's seed
    tr.load_state_dict(state)
    assert tr.step_count == 6
    s = tr.optimizer.state[tr.theta]  # converted to torch.optim.Adam's own state, bit for bit
    assert float(s["step"]) == 6
    assert torch.equal(s["exp_avg"], state["optimizer"]["exp_avg"])
    assert torch.equal(s["exp_avg_sq"], state["optimizer"]["exp_avg_sq"])
    assert tr.optimizer.param_groups[0]["eps"] == 1e-3 and tr.optimizer.param_groups[0]["lr"] == 2e-2
    tr.step()  # step 7: the same estimate as 0.1.0's step 7, through torch.optim.Adam
    ref = load_file(str(OLD_REF))
    # in float32 ulps at the token's scale (its largest value)
    ulps = (tr.theta - ref["theta_7"]).abs().max() / (torch.finfo(torch.float32).eps * ref["theta_7"].abs().max())
    print(f"step 7 from the 0.1.0 state vs 0.1.0's step 7: max |diff| {float((tr.theta - ref['theta_7']).abs().max()):.3g}, "
          f"{int((tr.theta != ref['theta_7']).sum())} of {tr.theta.numel()} values differ, {float(ulps):.2f} ulp")
    assert float(ulps) <= ONE_STEP_ULPS
    assert float((ref["theta_7"] - state["theta"]).abs().max()) > 1e-3  # the step did move the token
    tr.run(12)  # and it trains on: as close to 0.1.0's step 12 as two runs a few ulps apart stay
    assert float((tr.theta - ref["theta_12"]).abs().max()) < 0.05


def test_fixed_seed_run_before_and_after_the_switch():
    """The new path is deterministic; 0.1.0's token after 300 steps is as far from the optimum as this one."""
    a, b = make(), make()
    a.run(300)
    b.run(300)
    assert torch.equal(a.theta, b.theta)  # bit for bit, run to run
    ref = load_file(str(OLD_REF))["theta_300"]
    target = torch.randn(2, 16, generator=generator(123))
    old, new, start = (float((t - target).norm()) for t in (ref, a.theta, torch.zeros_like(ref)))
    print(f"300 steps: distance to the optimum 0.1.0 {old:.4f}, now {new:.4f} (from {start:.4f}); "
          f"max |diff| {float((a.theta - ref).abs().max()):.3g}")
    assert new < start / 4 and abs(new - old) < 0.05 * old


def test_resume_through_a_state_file_is_exact():
    full = make()
    full.run(20)
    part = make()
    part.run(9)
    resumed = make(seed=1)
    resumed.load_state_dict(state_from_bytes(state_to_bytes(part.state_dict())))
    resumed.run(20)
    assert torch.equal(full.theta, resumed.theta) and full.history == resumed.history


def _refused(state: dict, match: str) -> None:
    tr = make()
    before = tr.theta.clone()
    with pytest.raises(ValueError, match=match):
        tr.load_state_dict(state)
    assert torch.equal(tr.theta, before) and tr.step_count == 0  # nothing was half-loaded


def test_an_optimizer_state_in_another_layout_is_refused_with_the_reason():
    state = old_state()
    theta = torch.zeros(2, 16)
    opt = paper_adam(theta)
    theta.grad = torch.ones(2, 16)
    opt.step()
    state["optimizer"] = opt.state_dict()  # torch's own layout is not the file's
    _refused(state, r"not Adam's .*not\s+written by this version of ZOODiP.*without its \.zoodip-state")


def test_a_damaged_optimizer_state_is_refused():
    state = old_state()
    state["optimizer"]["exp_avg_sq"] = torch.full((2, 16), float("nan"))
    _refused(state, r"NaN or infinite values \(optimizer/exp_avg_sq\)")
    state = old_state()
    del state["optimizer"]["exp_avg"]
    _refused(state, r"no 'exp_avg'")
    state = old_state()
    state["optimizer"]["exp_avg"] = torch.zeros(3, 16)
    _refused(state, r"shape \(3, 16\)")
    state = old_state()
    state["optimizer"]["betas"] = [1.5, 0.999]
    _refused(state, "impossible values")
