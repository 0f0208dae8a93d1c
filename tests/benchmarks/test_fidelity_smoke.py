"""benchmarks/fidelity.py end to end at smoke size (2 steps per method, 2 seeds): a complete result.

In a subprocess: the benchmark starts its own headless host, which can only be set up once per
process. About a minute of one CPU thread (with the smoke toy checkpoint cached).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_fidelity_benchmark_smoke(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "fidelity.py"), "--size", "smoke", "--out-dir", str(tmp_path)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    data = json.loads((tmp_path / "fidelity_smoke.json").read_text())
    assert (tmp_path / "fidelity_smoke.md").read_text().count("|") > 20
    assert (tmp_path / "fidelity_samples_smoke.png").stat().st_size > 0
    methods = ("zoodip", "sg", "puts", "vanilla", "ti")
    assert set(data["summary"]) == set(methods)
    budget = data["budget_forwards"]
    for m in methods:
        runs = [r for r in data["runs"] if r["method"] == m]
        assert [r["seed"] for r in runs] == data["seeds"] and len(runs) >= 2
        for r in runs:
            # equal forward budgets: ZO n=2 spends 3 per step, TI 1 per step
            assert r["forwards"] == budget, (m, r)
            assert r["steps"] == (budget if m == "ti" else budget // 3)
            assert 0.0 <= r["accuracy"] <= 1.0
            for k in ("held_out_loss", "train_loss_first10", "train_loss_last10", "token_norm"):
                assert math.isfinite(r[k]), (m, k, r)
    for b in data["baselines"].values():
        assert math.isfinite(b["held_out_loss"]) and 0.0 <= b["accuracy"] <= 1.0
    # a trained token differs from its init: TI moved (it has an exact gradient), and seeds differ
    ti = [r["token_norm"] for r in data["runs"] if r["method"] == "ti"]
    zo = [r["token_norm"] for r in data["runs"] if r["method"] == "zoodip"]
    assert ti != zo
