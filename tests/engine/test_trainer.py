import math

import pytest
import torch

from zoodip import NonFiniteLossError, RandomGradientEstimator, SubspaceProjector, ZOAdam, ZOTrainer, held_out_loss
from zoodip.seeds import generator


def make(seed=0, projector=True, noise=0.0, queries=2):
    target = torch.randn(2, 16, generator=generator(123))

    def loss(thetas, s):
        # a noisy quadratic whose noise is shared by every query of a step (common random numbers)
        eps = noise * torch.randn(1, generator=generator(s))
        return ((thetas - target) ** 2).sum(dim=(1, 2)) + eps

    theta = torch.zeros(2, 16)
    tr = ZOTrainer(
        theta, loss, RandomGradientEstimator(queries, 1e-3), ZOAdam(theta, lr=2e-2),
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
    tr = ZOTrainer(theta, loss, RandomGradientEstimator(1), ZOAdam(theta), seed=0, max_bad_steps=3)
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
    tr = ZOTrainer(theta, loss, RandomGradientEstimator(2, 1e-3), ZOAdam(theta), seed=1)
    r = tr.step()
    assert seen[0].shape == (3, 3)  # n+1 queries evaluated in one call
    assert r.loss == pytest.approx(12.0)


def test_no_autograd_graph_is_built():
    def loss(thetas, s):
        out = (thetas**2).sum(dim=1)
        assert not out.requires_grad
        return out

    theta = torch.ones(3)
    ZOTrainer(theta, loss, RandomGradientEstimator(1), ZOAdam(theta)).run(3)
    assert theta.grad is None
