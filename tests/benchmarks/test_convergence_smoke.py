"""benchmarks/convergence.py runs end to end at its smoke size and writes a complete, consistent result.

In a subprocess (the benchmark starts its own headless host, which can be set up once per
process): 2 seeds x 6 variants x 6 forward passes on the tiny checkpoint, ~30 s of CPU with one
torch thread. The full default run's figures are in benchmarks/results/convergence.json (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def test_convergence_benchmark_smoke(tmp_path):
    out = tmp_path / "convergence.json"
    p = subprocess.run([sys.executable, "-m", "benchmarks.convergence", "--smoke", "--out", str(out), "-q"], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "Verdict: " in p.stdout and "UNIFORM" in p.stdout, p.stdout

    data = json.loads(out.read_text())
    s = data["settings"]
    budget, specs = s["budget"], [v["spec"] for v in s["variants"]]
    assert data["command"].startswith("python -m benchmarks.convergence --smoke")
    assert s["seeds"] >= 2 and len(data["seeds"]) == s["seeds"]
    assert s["timesteps"].startswith("uniform")
    assert s["grid_points"][0] == 0 and s["grid_points"][-1] == budget
    assert {"zo", "sg", "ti"} <= {v["kind"] for v in s["variants"]} and any(v["two_sided"] for v in s["variants"])

    # the setup: the teacher loss is exactly 0 at theta* and positive at the init token, and the
    # batched held-out evaluation gives the engine's held_out_loss at theta0
    assert data["held_out_at_theta_star_max"] == 0.0
    for seed in data["seeds"]:
        assert seed["held_out_at_theta_star"] == 0.0
        assert seed["held_out_at_theta0_engine"] > 0
        assert math.isclose(seed["held_out_at_theta0_batched"], seed["held_out_at_theta0_engine"], rel_tol=1e-4)
        assert set(seed["traces"]) == set(specs)

    rows = data["summary"]["variants"]
    assert list(rows) == specs
    for spec, r in rows.items():
        # an equal budget: every variant spent exactly `budget` forward passes, and the rows the
        # loss really evaluated agree with the accounting (ZO: every pass is a row; TI: 1 of 3)
        assert r["forward_passes"] == budget, spec
        assert r["steps"] * r["passes_per_step"] == budget, spec
        expect = budget // 3 if r["kind"] == "ti" else budget
        assert r["rows_evaluated"] == [expect] * s["seeds"], spec
        if r["kind"] != "ti":
            assert r["passes_per_step"] == (2 * r["n"] if r["two_sided"] else r["n"] + 1), spec
        for key in ("final_held_out", "final_over_initial", "final_cosine_to_theta_star", "final_distance_ratio"):
            st = r[key]
            assert all(_finite(st[k]) for k in ("mean", "std", "min", "max")), (spec, key)
            assert st["min"] <= st["mean"] <= st["max"], (spec, key)
        assert r["final_held_out"]["min"] > 0
        c = r["curve"]
        assert c["passes"][-1] == budget and c["passes"] == sorted(c["passes"]), spec
        assert all(0 <= x <= g for x, g in zip(c["passes"], s["grid_points"])), spec
        assert all(_finite(x) and x > 0 for x in c["held_out_mean"]), spec
        assert all(_finite(x) and -1 <= x <= 1 for x in c["cosine_mean"]), spec
        assert c["held_out_mean"][0] == rows[specs[0]]["curve"]["held_out_mean"][0]  # all start at theta0
        assert all(isinstance(x, str) or _finite(x) for x in r["ratio_per_seed"]), spec
    assert rows["zo:n=2"]["ratio_to_reference"] == 1.0
    for spec, r in rows.items():
        if r["kind"] == "sg":  # SG really ran: it refreshed and removed directions
            assert all(k >= 1 for k in r["sg_refreshes"]), spec
            assert all(d and min(d) >= 1 for d in r["sg_noise_directions"]), spec
    assert rows["ti"]["grad_norm_positive"]  # the reference really backpropagated to the token
    # first-order TI learns faster than ZO per pass even at this size (the loss falls in 2 TI steps)
    assert rows["ti"]["final_held_out"]["mean"] < rows["zo:n=2"]["final_held_out"]["mean"]
    verdict = data["summary"]["verdict"]
    assert verdict.split(":")[0] in ("YES", "NO", "NOT MATERIALLY"), verdict

    png = Path(data["plot"]) if Path(data["plot"]).is_absolute() else REPO / data["plot"]
    assert png == out.with_suffix(".png") and png.stat().st_size > 1000
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (1100, 900)


def test_convergence_refuses_an_unequal_budget():
    # 7 passes cannot be split into whole steps of 2, 3 and 3: refused before the host starts
    p = subprocess.run([sys.executable, "-m", "benchmarks.convergence", "--smoke", "--budget", "7"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "must be a multiple" in p.stderr, p.stderr[-2000:]
