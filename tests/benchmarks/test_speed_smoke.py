"""benchmarks/speed.py runs end to end on the tiny checkpoint and writes a complete result.

It runs in a subprocess: the benchmark starts its own headless host, and the host can only be
set up once per process. It costs about 20 s of CPU (one torch thread; 22-24 s wall on the
2-core dev machine, up to ~45 s when that machine was heavily shared), so it is not marked slow.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_speed_benchmark_tiny_smoke(tmp_path):
    out = tmp_path / "speed.json"
    cmd = [sys.executable, "-m", "benchmarks.speed", "--sizes", "tiny", "--repeats", "1", "--out", str(out), "-q"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "tiny: 64x64 px" in p.stdout and "first-order TI step" in p.stdout, p.stdout

    data = json.loads(out.read_text())
    assert data["machine"]["torch"] and data["machine"]["torch_threads"] >= 1 and data["machine"]["device"]
    assert data["clock"] in ("cpu", "wall")
    assert set(data["sizes"]) == {"tiny"}
    r = data["sizes"]["tiny"]
    assert r["image_px"] == 64 and r["latent_shape"] == [4, 8, 8] and r["repeats"] == 1
    cases = r["cases"]
    names = {"forward", "ti_step"} | {f"step_n{n}_{m}" for n in (1, 2, 4) for m in ("batched", "unbatched")}
    assert set(cases) == names
    for name, c in cases.items():
        for clock in ("wall", "cpu"):
            assert len(c[clock]["seconds"]) == 1 and c[clock]["median"] > 0, name
    for n in (1, 2, 4):
        # batched: one text-encoder and one UNet call holding the n+1 queries; unbatched: n+1 calls
        assert cases[f"step_n{n}_batched"]["forward_batch_sizes"] == {"text_encoder": [n + 1], "unet": [n + 1]}
        assert cases[f"step_n{n}_unbatched"]["forward_batch_sizes"] == {"text_encoder": [1] * (n + 1), "unet": [1] * (n + 1)}
    assert cases["forward"]["forward_batch_sizes"] == {"text_encoder": [1], "unet": [1]}
    assert all(g > 0 for g in cases["ti_step"]["grad_norms"])  # the baseline really backpropagated to the token
    for clock in ("wall", "cpu"):
        assert all(math.isfinite(v) and v > 0 for v in r["ratios"][clock].values())
        assert all(isinstance(v, bool) for v in r["targets"][clock].values())
        assert r["default_run"][clock]["tokens_per_hour"] > 0
