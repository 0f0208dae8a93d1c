import torch

from zoodip import RandomGradientEstimator


def test_queries_share_seed_and_regenerate_directions():
    est = RandomGradientEstimator(queries=3, mu=1e-2)
    theta = torch.randn(2, 8)
    q1 = est.queries(theta, seed=7)
    q2 = est.queries(theta, seed=7)
    assert q1.shape == (4, 2, 8)
    assert torch.equal(q1, q2)
    assert torch.equal(q1[0], theta)
    assert not torch.equal(est.queries(theta, seed=8), q1)


def test_one_sided_estimate_matches_the_formula():
    est = RandomGradientEstimator(queries=2, mu=1e-3)
    theta = torch.zeros(4)
    losses = torch.tensor([1.0, 1.5, 0.25])
    g = est.estimate(losses, theta, seed=3)
    u = est.directions(theta.shape, 3).double()
    expected = ((0.5 / 1e-3) * u[0] + (-0.75 / 1e-3) * u[1]) / 2
    torch.testing.assert_close(g, expected.float())


def test_estimate_is_unbiased_for_a_linear_loss():
    # for L(x) = a.x the RGE's mean over many seeds is a
    a = torch.tensor([1.0, -2.0, 0.5, 3.0])
    est = RandomGradientEstimator(queries=4, mu=1e-2)
    theta = torch.zeros(4)
    total = torch.zeros(4)
    for s in range(3000):
        q = est.queries(theta, s)
        total += est.estimate(q @ a, theta, s)
    torch.testing.assert_close(total / 3000, a, atol=0.15, rtol=0)


def test_two_sided_estimate_is_exact_in_expectation_for_quadratic_curvature():
    est = RandomGradientEstimator(queries=2, mu=0.5, two_sided=True)
    assert est.num_evaluations == 4
    theta = torch.tensor([1.0, 2.0])
    q = est.queries(theta, 5)
    losses = (q**2).sum(dim=1)
    g = est.estimate(losses, theta, 5)
    # central differences of a quadratic are exact: coeff_i = 2 theta.u_i
    u = est.directions(theta.shape, 5)
    expected = ((2 * u @ theta)[:, None] * u).mean(0)
    torch.testing.assert_close(g, expected)
    assert abs(est.clean_loss(losses) - float(losses.mean())) < 1e-6


def test_wrong_number_of_losses_is_refused():
    est = RandomGradientEstimator(queries=2)
    try:
        est.estimate(torch.zeros(2), torch.zeros(3), 0)
    except ValueError as e:
        assert "expected 3 losses" in str(e)
    else:
        raise AssertionError("accepted a wrong number of losses")
