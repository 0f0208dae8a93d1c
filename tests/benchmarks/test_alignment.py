"""benchmarks/alignment.py: the instrument on losses whose gradients are known, then a smoke run in the host."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import alignment
from zoodip.estimator import RandomGradientEstimator
from zoodip.seeds import derive_seed, generator

REPO = Path(__file__).resolve().parents[2]
D = 256


def linear(mean: torch.Tensor, noise: float):
    """L(theta; draw) = (mean + noise * e_draw) . theta: each draw's exact gradient is known."""

    def grad(theta, seed):
        return mean + noise * torch.randn(mean.shape, generator=generator(seed))

    def loss(thetas, seed):
        return thetas.reshape(thetas.shape[0], -1).double() @ grad(None, seed).reshape(-1).double()

    return loss, grad


def run(loss, grad, **kw):
    args = {"ns": [1, 2, 32], "mu": 1e-3, "draws": 64, "reference_draws": 16, "seed": 3} | kw
    return alignment.measure(loss, grad, torch.zeros(1, D), RandomGradientEstimator, derive_seed, **args)


def test_exact_gradients_align_and_zo_follows_the_random_direction_law():
    mean = torch.randn(1, D, generator=generator(0))
    m = run(*linear(mean, noise=0.01))
    assert m["reference_self_cosine"] > 0.999 and m["cosine"]["ti"]["mean"] > 0.999
    for n in (1, 2, 32):  # E cos = about sqrt(n / (D + n + 1)) for Gaussian directions
        assert abs(m["cosine"][f"zo_n{n}"]["mean"] - math.sqrt(n / (D + n + 1))) < 0.03, (n, m["cosine"])
    assert m["cosine"]["zo_n32"]["mean"] > 3 * m["cosine"]["zo_n1"]["mean"]


def test_a_reference_drowned_in_draw_noise_says_so():
    # the per-draw gradients are mostly noise: the two halves of the reference disagree, and the
    # low TI figure is read as the reference's fault, not as TI's
    m = run(*linear(torch.randn(1, D, generator=generator(0)) * 0.01, noise=1.0))
    assert abs(m["reference_self_cosine"]) < 0.3


def test_a_projection_onto_the_gradient_direction_gives_cosine_one():
    mean = torch.randn(1, D, generator=generator(0))
    unit = mean / mean.norm()
    m = run(*linear(mean, noise=0.0), project=lambda g: (g * unit).sum() * unit, project_n=2)
    assert m["cosine"]["zo_n2_sg"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert m["cosine"]["zo_n2"]["mean"] < 0.3  # the same estimates before projecting


def test_the_n_estimates_share_directions_as_the_doc_says():
    big, small = RandomGradientEstimator(32), RandomGradientEstimator(2)
    assert torch.equal(big.directions(torch.Size([1, D]), 99)[:2], small.directions(torch.Size([1, D]), 99))
    with pytest.raises(ValueError, match="reference_draws >= 2"):
        run(*linear(torch.ones(1, D), 0.0), reference_draws=1)


def test_alignment_smoke_in_the_host(tmp_path):
    p = subprocess.run([sys.executable, "-m", "benchmarks.alignment", "--size", "smoke", "--out-dir", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    data = json.loads((tmp_path / "alignment_smoke.json").read_text())
    assert [pt["step"] for pt in data["points_measured"]] == [0, 2]
    for pt in data["points_measured"]:
        assert set(pt["cosine"]) >= {"ti", "zo_n1", "zo_n2"}
        assert all(-1 <= c["mean"] <= 1 for c in pt["cosine"].values()) and pt["gradient_norm"] > 0
    assert data["weights_sha256"] and "| 0 |" in (tmp_path / "alignment_smoke.md").read_text()
