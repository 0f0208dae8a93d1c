import pytest
import torch

from zoodip import PUTSSampler, ZOAdam
from zoodip.seeds import derive_seed, generator


def test_adam_matches_torch_adam():
    p1 = torch.randn(5)
    p2 = p1.clone().requires_grad_(True)
    ours = ZOAdam(p1, lr=1e-2, eps=1e-3)
    ref = torch.optim.Adam([p2], lr=1e-2, eps=1e-3)
    for i in range(20):
        g = torch.randn(5, generator=generator(i))
        ours.step(g)
        p2.grad = g.clone()
        ref.step()
    torch.testing.assert_close(p1, p2.detach(), rtol=1e-5, atol=1e-6)


def test_adam_state_round_trip():
    p = torch.zeros(3)
    opt = ZOAdam(p, lr=0.1)
    for i in range(3):
        opt.step(torch.ones(3) * i)
    q = p.clone()
    opt2 = ZOAdam(q, lr=0.5)
    opt2.load_state_dict(opt.state_dict())
    g = torch.tensor([1.0, -1.0, 2.0])
    opt.step(g)
    opt2.step(g)
    assert torch.equal(p, q)


def test_puts_samples_inside_its_band():
    s = PUTSSampler(500, 900)
    t = s.sample(generator(0), 10000)
    assert int(t.min()) >= 500 and int(t.max()) <= 899
    assert int(t.max()) >= 890 and int(t.min()) <= 510  # and covers it
    u = PUTSSampler.uniform(1000).sample(generator(0), 10000)
    assert int(u.min()) < 50 and int(u.max()) > 950


@pytest.mark.parametrize("lo,hi", [(900, 500), (500, 500), (-1, 10), (0, 1001)])
def test_puts_bad_band_is_refused(lo, hi):
    with pytest.raises(ValueError, match="t_min"):
        PUTSSampler(lo, hi)


def test_derived_seeds_differ_and_repeat():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    assert len({derive_seed(1, k) for k in range(1000)}) == 1000
    assert derive_seed(1, 2) != derive_seed(2, 1)
