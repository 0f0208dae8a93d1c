import math

import pytest
import torch

from zoodip import NonFiniteLossError, RandomGradientEstimator, SubspaceProjector, ZOTrainer, held_out_loss, paper_adam
from zoodip.optim import adam_state
from zoodip.seeds import generator


def make(seed=0, projector=True, noise=0.0, queries=2):
    target = torch.randn(2, 16, generator=generator(123))

    def loss(thetas, s):
        # a noisy quadratic whose noise is shared by every query of a step (common random numbers)
        eps = noise * torch.randn(1, generator=generator(s))
        return ((thetas - target) ** 2).sum(dim=(1, 2)) + eps

    theta = torch.zeros(2, 16)
    tr = ZOTrainer(
        theta, loss, RandomGradientEstimator(queries, 1e-3), paper_adam(theta, lr=2e-2),
        SubspaceProjector(16, 1e-3) if projector else None, seed=seed,
    )
    return tr, loss, target


def test_converges_to_planted_optimum():
    tr, loss, target = make(noise=1.0)
    before = held_out_loss(loss, tr.theta, seed=9)
    tr.run(1500)
    after = held_out_loss(loss, tr.theta, seed=9)
    assert after < before / 50
    assert tr.projector.refreshes > 10
    assert len(tr.history) == 1500


def test_same_seed_same_result_bit_for_bit():
    a, _, _ = make(seed=5)
    b, _, _ = make(seed=5)
    a.run(300)
    b.run(300)
    assert torch.equal(a.theta, b.theta)
    c, _, _ = make(seed=6)
    c.run(300)
    assert not torch.equal(a.theta, c.theta)


def test_stop_and_resume_is_exact():
    full, _, _ = make(seed=3)
    full.run(100)
    part, _, _ = make(seed=3)
    part.run(37)
    state = part.state_dict()
    resumed, _, _ = make(seed=999)  # a different seed: the state must carry the run's own
    resumed.load_state_dict(state)
    resumed.run(100)
    assert torch.equal(full.theta, resumed.theta)
    assert full.history == resumed.history


def test_non_finite_losses_are_skipped_then_stop_with_last_good_token():
    calls = {"n": 0}

    def loss(thetas, s):
        calls["n"] += 1
        if calls["n"] > 3:
            return torch.full((thetas.shape[0],), math.nan)
        return (thetas**2).sum(dim=1)

    theta = torch.ones(4)
    tr = ZOTrainer(theta, loss, RandomGradientEstimator(1), paper_adam(theta), seed=0, max_bad_steps=3)
    tr.run(3)
    good = theta.clone()
    assert tr.step().skipped
    assert tr.step().skipped
    with pytest.raises(NonFiniteLossError, match="last good value"):
        tr.step()
    assert torch.equal(theta, good)
    assert tr.skipped_steps == 3


def test_clean_loss_is_the_unperturbed_query():
    seen = []

    def loss(thetas, s):
        seen.append(thetas.clone())
        return (thetas**2).sum(dim=1)

    theta = torch.full((3,), 2.0)
    tr = ZOTrainer(theta, loss, RandomGradientEstimator(2, 1e-3), paper_adam(theta), seed=1)
    r = tr.step()
    assert seen[0].shape == (3, 3)  # n+1 queries evaluated in one call
    assert r.loss == pytest.approx(12.0)


def test_no_autograd_graph_is_built():
    def loss(thetas, s):
        out = (thetas**2).sum(dim=1)
        assert not out.requires_grad
        return out

    theta = torch.ones(3)
    ZOTrainer(theta, loss, RandomGradientEstimator(1), paper_adam(theta)).run(3)
    assert theta.grad is None


# --- a token that must never become non-finite or absurdly large ----------------------------------


def _trainer(loss, lr=1e-2, mu=1e-3):
    theta = torch.zeros(1, 8)
    return ZOTrainer(theta, loss, RandomGradientEstimator(1, mu), paper_adam(theta, lr=lr), seed=0)


def test_a_runaway_update_is_refused_and_the_last_good_token_kept():
    from zoodip.trainer import DivergedError

    tr = _trainer(lambda th, s: (th ** 2).sum(dim=(1, 2)) + 1.0, lr=1e-2)
    tr.run(3)
    good, opt = tr.theta.clone(), adam_state(tr.optimizer)
    tr.optimizer.param_groups[0]["lr"] = 1e9  # what an edited workflow could send
    with pytest.raises(DivergedError, match=r"step 4 would move the token to values up to 7.64e\+08 \(beyond 65504.*last good value"):
        tr.step()
    assert torch.equal(tr.theta, good) and tr.step_count == 3
    assert torch.equal(adam_state(tr.optimizer)["exp_avg"], opt["exp_avg"]) and adam_state(tr.optimizer)["t"] == 3
    assert isinstance(DivergedError("x"), NonFiniteLossError)


def test_a_refused_update_leaves_the_projector_as_before_the_step():
    # the rollback takes back the projector's observation too: a resume re-runs the step and must not
    # see theta twice (tau=3: the refused step would have completed a window and refreshed the basis)
    from zoodip.trainer import DivergedError

    theta = torch.zeros(1, 8)
    tr = ZOTrainer(theta, lambda th, s: (th ** 2).sum(dim=(1, 2)) + 1.0, RandomGradientEstimator(1, 1e-3),
                   paper_adam(theta, lr=1e-2), SubspaceProjector(3, 1e-3), seed=0)
    tr.run(2)
    before = tr.projector.state_dict()
    tr.optimizer.param_groups[0]["lr"] = 1e9
    with pytest.raises(DivergedError):
        tr.step()
    after = tr.projector.state_dict()
    assert after["count"] == before["count"] == 2 and after["refreshes"] == before["refreshes"] == 0
    assert torch.equal(after["buffer"], before["buffer"]) and after["noise_basis"] is None


def test_an_infinite_estimate_from_finite_losses_is_skipped():
    # finite losses whose difference over a tiny mu overflows: the estimate is inf, the step skipped
    tr = _trainer(lambda th, s: torch.tensor([0.0, 3e38]), mu=1e-300)
    r = tr.step()
    assert r.skipped and tr.skipped_steps == 1 and torch.equal(tr.theta, torch.zeros(1, 8))


def test_check_state_finds_what_load_state_dict_would_trip_on():
    from zoodip.trainer import check_state

    tr, _, _ = make()
    tr.run(20)
    good = tr.state_dict()
    check_state(good, (2, 16))
    no_opt = {k: v for k, v in good.items() if k != "optimizer"}
    with pytest.raises(ValueError, match="it lacks optimizer"):
        check_state(no_opt, (2, 16))
    with pytest.raises(ValueError, match=r"it is damaged \(no 'exp_avg'\)"):
        check_state({**good, "optimizer": {"lr": 1.0}}, (2, 16))
    with pytest.raises(ValueError, match="for a token of shape"):
        check_state(good, (1, 16))
    nan_moments = {**good, "optimizer": {**good["optimizer"], "exp_avg_sq": torch.full((2, 16), math.nan)}}
    with pytest.raises(ValueError, match=r"NaN or infinite values \(optimizer/exp_avg_sq\)"):
        check_state(nan_moments, (2, 16))
    with pytest.raises(ValueError, match="not a training state"):
        check_state([1, 2], (2, 16))
    with pytest.raises(ValueError, match="tau must be at least 2"):
        check_state({**good, "projector": {**good["projector"], "tau": 1}}, (2, 16))
