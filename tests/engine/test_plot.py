import math

import numpy as np

from zoodip.plot import render_loss_plot, smooth


def test_smooth_skips_non_finite_and_tracks_the_mean():
    s = smooth([1.0, math.nan, 1.0, 1.0], 0.9)
    assert s[0] == 1.0 and s[1] == 1.0 and abs(s[-1] - 1.0) < 1e-12
    assert math.isnan(smooth([math.nan])[0])


def test_plot_draws_the_series():
    falling = [2.0 - i / 100 for i in range(100)]
    img = render_loss_plot(falling, [(0, 2.0), (100, 1.0)], width=400, height=300)
    assert img.shape == (300, 400, 3) and img.dtype == np.uint8
    dark_blue = (img[..., 2] > 120) & (img[..., 0] < 60)
    ys, xs = np.nonzero(dark_blue[40:250, 70:380])
    assert len(xs) > 100
    # a falling loss: the smoothed line is higher on the left than on the right
    left, right = ys[xs < 50].mean(), ys[xs > 250].mean()
    assert left < right  # image rows grow downwards
    orange = (img[..., 0] > 200) & (img[..., 1] > 80) & (img[..., 1] < 140) & (img[..., 2] < 40)
    assert orange.sum() > 10  # held-out markers


def test_plot_without_values_says_so():
    img = render_loss_plot([math.nan, math.nan])
    assert img.shape[2] == 3
