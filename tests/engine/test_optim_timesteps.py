import pytest
import torch

from zoodip import PUTSSampler, paper_adam
from zoodip.optim import adam_state, load_adam_state, only_param
from zoodip.seeds import derive_seed, generator


def test_paper_adam_is_torch_adam_with_the_papers_settings():
    p = torch.zeros(3)
    opt = paper_adam(p, lr=1e-2)
    assert type(opt) is torch.optim.Adam and only_param(opt) is p
    g = opt.param_groups[0]
    assert (g["lr"], g["betas"], g["eps"]) == (1e-2, (0.9, 0.999), 1e-3)
    assert g["foreach"] is False and g["fused"] is False and g["capturable"] is False
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        paper_adam(p, lr=0.0)


def test_adam_state_round_trip():
    p = torch.zeros(3)
    opt = paper_adam(p, lr=0.1)
    for i in range(3):
        p.grad = torch.ones(3) * i
        opt.step()
    q = p.clone()
    opt2 = paper_adam(q, lr=0.5)
    load_adam_state(opt2, adam_state(opt))
    assert adam_state(opt2)["t"] == 3 and adam_state(opt2)["lr"] == 0.1
    g = torch.tensor([1.0, -1.0, 2.0])
    p.grad, q.grad = g.clone(), g.clone()
    opt.step()
    opt2.step()
    assert torch.equal(p, q)


def test_a_fresh_optimizer_state_round_trips_too():
    p = torch.zeros(2, 4)
    s = adam_state(paper_adam(p))
    assert s["t"] == 0 and torch.equal(s["exp_avg"], torch.zeros(2, 4))
    q = torch.zeros(2, 4)
    opt = paper_adam(q, lr=0.3)
    load_adam_state(opt, s)
    assert opt.state.get(q) is None and opt.param_groups[0]["lr"] == 5e-3


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
