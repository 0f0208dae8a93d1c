"""CI starts every cache the project keeps empty (a fresh machine), so a test that only passes
because an earlier run left a cached toy model or checkpoint behind fails on CI too."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cache_variables() -> set[str]:
    """Every ``*_CACHE`` environment variable the pack, devtools or benchmarks read."""
    found = set()
    for folder in ("zoodip", "nodes", "devtools", "benchmarks", "scripts"):
        for f in (REPO / folder).rglob("*"):
            if f.suffix in (".py", ".sh") and f.is_file():
                found |= set(re.findall(r"\b(ZOODIP_[A-Z_]*CACHE)\b", f.read_text()))
    return found


def test_ci_run_points_every_cache_at_a_fresh_empty_folder():
    names = cache_variables()
    assert {"ZOODIP_TOYMODEL_CACHE", "ZOODIP_ASSET_CACHE"} <= names  # the scan finds what it should
    run = (REPO / ".ci" / "run").read_text()
    assert re.search(r'^CACHES="\$\(mktemp -d\b', run, re.M) and "trap 'rm -rf \"$CACHES\"' EXIT" in run
    for name in names:
        assert re.search(rf'^export {name}="\$CACHES/', run, re.M), f".ci/run does not start {name} empty"
    # set before the tests run
    assert run.index("bash scripts/test.sh") > max(run.index(f"export {n}=") for n in names)
