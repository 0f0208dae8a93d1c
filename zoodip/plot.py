"""A loss plot drawn with Pillow (no plotting library needed inside ComfyUI)."""

from __future__ import annotations

import math

import numpy as np


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction; non-finite values are passed over."""
    out, avg, n = [], 0.0, 0
    for v in values:
        if math.isfinite(v):
            avg = weight * avg + (1 - weight) * v
            n += 1
        out.append(avg / (1 - weight**n) if n else math.nan)
    return out


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=10 * mag)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def render_loss_plot(
    loss: list[float],
    held_out: list[tuple[int, float]] | None = None,
    title: str = "ZOODiP loss",
    width: int = 768,
    height: int = 432,
    smoothing: float = 0.9,
) -> np.ndarray:
    """An RGB uint8 image (H, W, 3): raw clean loss per step, its EMA, and held-out points."""
    from PIL import Image, ImageDraw, ImageFont

    held_out = [(int(s), float(v)) for s, v in (held_out or []) if math.isfinite(v)]
    steps = list(range(1, len(loss) + 1))
    finite = [v for v in loss if math.isfinite(v)] + [v for _, v in held_out]
    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 70, width - 20, 36, height - 50
    d.text((left, 10), title, fill=(0, 0, 0), font=font)
    if not finite:
        d.text((left, height // 2), "no finite loss values yet", fill=(120, 0, 0), font=font)
        return np.asarray(img)
    lo, hi = min(finite), max(finite)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * abs(lo or 1), hi + 0.5 * abs(hi or 1)
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    x_max = max(len(loss), max((s for s, _ in held_out), default=1), 1)

    def xy(step: float, v: float) -> tuple[float, float]:
        x = left + (right - left) * (step / x_max if x_max else 0)
        y = bottom - (bottom - top) * (v - lo) / (hi - lo)
        return x, y

    # axes, grid and tick labels
    d.line([(left, top), (left, bottom), (right, bottom)], fill=(0, 0, 0), width=1)
    for t in _ticks(lo, hi):
        _, y = xy(0, t)
        d.line([(left, y), (right, y)], fill=(230, 230, 230))
        d.text((5, y - 6), _fmt(t), fill=(60, 60, 60), font=font)
    for t in _ticks(0, x_max):
        x, _ = xy(t, lo)
        d.line([(x, bottom), (x, bottom + 4)], fill=(0, 0, 0))
        d.text((x - 10, bottom + 8), str(int(t)), fill=(60, 60, 60), font=font)
    d.text(((left + right) // 2 - 10, height - 20), "step", fill=(0, 0, 0), font=font)
    d.text((5, top - 22), "loss", fill=(0, 0, 0), font=font)

    def polyline(values: list[float], color: tuple[int, int, int], w: int) -> None:
        run: list[tuple[float, float]] = []
        for s, v in zip(steps, values):
            if math.isfinite(v):
                run.append(xy(s, v))
            elif run:
                d.line(run, fill=color, width=w) if len(run) > 1 else None
                run = []
        if len(run) > 1:
            d.line(run, fill=color, width=w)
        elif len(run) == 1:
            x, y = run[0]
            d.ellipse([x - 1, y - 1, x + 1, y + 1], fill=color)

    polyline(loss, (160, 190, 230), 1)
    polyline(smooth(loss, smoothing), (20, 60, 160), 2)
    for s, v in held_out:
        x, y = xy(s, v)
        d.ellipse([x - 4, y - 4, x + 4, y + 4], outline=(220, 110, 0), width=2)

    # legend
    lx = right - 230
    d.line([(lx, 14), (lx + 20, 14)], fill=(160, 190, 230), width=1)
    d.text((lx + 24, 8), "clean loss", fill=(0, 0, 0), font=font)
    d.line([(lx + 90, 14), (lx + 110, 14)], fill=(20, 60, 160), width=2)
    d.text((lx + 114, 8), "smoothed", fill=(0, 0, 0), font=font)
    if held_out:
        d.ellipse([lx + 170, 10, lx + 178, 18], outline=(220, 110, 0), width=2)
        d.text((lx + 182, 8), "held-out", fill=(0, 0, 0), font=font)
    return np.asarray(img)
