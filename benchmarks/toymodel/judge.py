"""Validate the judge: train it as every benchmark does (classifier.train's defaults) and record how
it names each of the 20 colour x shape combinations, freshly drawn, through the toy VAE.

Goal (issue 15): each combination named right (colour and shape) >= 95% of the time.

    python -m benchmarks.toymodel judge       # writes benchmarks/results/judge.json and .md
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import classifier, data

GOAL = 0.95
# classifier.train's defaults: the judge every benchmark uses
TRAIN_DEFAULTS = {k: p.default for k, p in inspect.signature(classifier.train).parameters.items()
                  if p.default is not inspect.Parameter.empty}


def run(samples: int, out: Path | None, say: Callable[[str], None] = print) -> dict[str, Any]:
    t0 = time.perf_counter()
    say("training the judge on all 20 colour x shape combinations (classifier.train defaults)")
    clf = classifier.cached(None)
    say(f"test accuracy {clf.test_accuracy}; judging {samples} fresh images of each combination")
    per = classifier.per_combination(clf, None, per_concept=samples)
    both = [v["both"] for v in per.values()]
    result = {
        "judge_version": classifier.VERSION,
        "train": {**TRAIN_DEFAULTS, "combinations": len(data.ALL_CONCEPTS)},
        "test_accuracy": clf.test_accuracy,
        "samples_per_combination": samples,
        "fresh_seed": 4000,
        "per_combination": per,
        "min_both": min(both),
        "mean_both": sum(both) / len(both),
        "combinations_at_goal": sum(b >= GOAL for b in both),
        "goal": GOAL,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(table(result) + "\n")
    return result


def table(r: dict[str, Any]) -> str:
    lines = [
        f"The judge (classifier v{r['judge_version']}), {r['samples_per_combination']} freshly drawn images of each "
        "combination through the toy VAE: share named right.",
        "",
        "| drawn | both right | colour right | shape right | most common mistake |",
        "|---|---|---|---|---|",
    ]
    for name, v in r["per_combination"].items():
        lines.append(f"| {name} | {v['both']:.0%} | {v['colour']:.0%} | {v['shape']:.0%} | {v['most_common_error'] or ''} |")
    lines.append(
        f"\n{r['combinations_at_goal']}/{len(r['per_combination'])} combinations at >= {r['goal']:.0%}; "
        f"min {r['min_both']:.1%}, mean {r['mean_both']:.1%}."
    )
    return "\n".join(lines)
