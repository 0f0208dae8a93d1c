"""benchmarks/memory.py runs end to end on the tiny checkpoint and writes a complete result.

Two cases (int8: sampling and chunked training), each in its own process as the benchmark runs
them; ~40 s of CPU on 2 cores. The full-size figures come from a manual run (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("bitsandbytes")


def test_memory_benchmark_tiny_smoke(tmp_path):
    out = tmp_path / "memory.json"
    cmd = [sys.executable, "-m", "benchmarks.memory", "--size", "tiny", "--precisions", "int8",
           "--phases", "sample,train", "--steps", "1", "--out", str(out)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "| int8 |" in p.stdout, p.stdout

    data = json.loads(out.read_text())
    assert data["benchmark"] == "memory" and data["settings"]["size"] == "tiny" and not data["failed"]
    cases = {c["phase"]: c for c in data["cases"]}
    assert set(cases) == {"sample", "train"}
    pids = set()
    for phase, c in cases.items():
        assert c["precision"] == "int8" and c["rss_peak"] >= c["rss_start"] > 0, phase
        assert c["weights"]["total"] > 0 and c["weights"]["unet"] > 0 and c["weights"]["text_encoder"] > 0
        pids.add(c["pid"])
    assert len(pids) == 2  # one process per case
    assert cases["sample"]["unet_batches"] == [2]  # cond + uncond
    assert max(cases["train"]["unet_batches"]) <= 2  # n+1 = 3 queries in batches of at most 2
    assert len(cases["train"]["loss"]) == 1
    (row,) = data["rows"]
    assert row["precision"] == "int8" and 0.5 < row["train_over_sample"] < 2
