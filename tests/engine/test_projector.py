import pytest
import torch

from zoodip import SubspaceProjector


def test_passthrough_before_first_refresh():
    p = SubspaceProjector(tau=4, nu=1e-3)
    g = torch.randn(3, 5)
    for _ in range(3):
        p.observe(torch.randn(3, 5))
    assert p.noise_basis is None
    assert torch.equal(p.project(g), g)


def test_low_variance_directions_are_removed():
    torch.manual_seed(0)
    d, tau = 10, 16
    p = SubspaceProjector(tau=tau, nu=1e-3)
    # a trajectory that lies (up to tiny noise) on a 2-D plane: after per-dimension
    # standardization it is still rank 2, so everything else is low-variance
    plane = torch.randn(2, d)
    traj = torch.randn(tau, 2) @ plane + 1e-6 * torch.randn(tau, d)
    for i in range(tau):
        p.observe(traj[i])
    assert p.refreshes == 1
    assert p.num_noise_directions == d - 2
    basis = p.noise_basis
    torch.testing.assert_close(basis @ basis.T, torch.eye(basis.shape[0], dtype=basis.dtype), atol=1e-8, rtol=0)
    g = torch.randn(d)
    out = p.project(g)
    # the projected estimate has nothing left along the noise directions
    assert (basis.float() @ out).abs().max() < 1e-5
    assert out.shape == g.shape and out.dtype == g.dtype


def test_state_dict_round_trip_continues_identically():
    a, b = SubspaceProjector(5, 0.1), SubspaceProjector(5, 0.1)
    pts = [torch.randn(2, 3) for _ in range(12)]
    for x in pts[:7]:
        a.observe(x)
    b.load_state_dict(a.state_dict())
    for x in pts[7:]:
        a.observe(x)
        b.observe(x)
    g = torch.randn(2, 3)
    assert torch.equal(a.project(g), b.project(g))


@pytest.mark.parametrize("tau,nu", [(1, 1e-3), (0, 1e-3), (8, 0.0), (8, 1.0), (8, -0.5)])
def test_bad_settings_are_refused(tau, nu):
    with pytest.raises(ValueError):
        SubspaceProjector(tau, nu)
