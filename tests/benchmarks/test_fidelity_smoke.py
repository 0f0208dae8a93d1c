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

import pytest

REPO = Path(__file__).resolve().parents[2]


def fidelity(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "benchmarks.fidelity", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


def test_fidelity_benchmark_smoke(tmp_path):
    every = "zoodip,vanilla,ti,sg,puts,ti_steps"  # the default leaves out ti_steps (3x TI's compute)
    p = fidelity("--size", "smoke", "--methods", every, "--out-dir", str(tmp_path))
    assert p.returncode == 0, p.stderr[-4000:]
    data = json.loads((tmp_path / "fidelity_smoke.json").read_text())
    assert (tmp_path / "fidelity_smoke.md").read_text().count("|") > 20
    assert (tmp_path / "fidelity_samples_smoke.png").stat().st_size > 0
    assert (tmp_path / "fidelity_smoke_curve.png").stat().st_size > 0
    from benchmarks.toymodel import data as toy

    assert data["init_word"] == toy.TOKEN_INIT_WORD  # the benchmark starts where the toy workflow does
    assert data["baselines"]["init_word"]["text"] == f"a photo of a {toy.TOKEN_INIT_WORD}"
    methods = ("zoodip", "sg", "puts", "vanilla", "ti", "ti_steps")
    assert set(data["summary"]) == set(methods)
    budget = data["budget_forwards"]
    for m in methods:
        runs = [r for r in data["runs"] if r["method"] == m]
        assert [r["seed"] for r in runs] == data["seeds"] and len(runs) >= 2
        for r in runs:
            # equal budgets: ZO n=2 spends 3 forwards per step, a TI step (forward + backward) counts as 3;
            # ti_steps takes one step per ZO forward pass, 3x the compute
            assert r["steps"] == {"ti_steps": budget}.get(m, budget // 3), (m, r)
            assert r["forwards"] == r["steps"] * (1 if m.startswith("ti") else 3), (m, r)
            assert r["forward_equivalents"] == (3 * budget if m == "ti_steps" else budget), (m, r)
            assert 0.0 <= r["accuracy"] <= 1.0
            for k in ("held_out_loss", "train_loss_first10", "train_loss_last10", "token_norm"):
                assert math.isfinite(r[k]), (m, k, r)
    for b in data["baselines"].values():
        assert math.isfinite(b["held_out_loss"]) and 0.0 <= b["accuracy"] <= 1.0
    # a trained token differs from its init: TI moved (it has an exact gradient), and seeds differ
    ti = [r["token_norm"] for r in data["runs"] if r["method"] == "ti"]
    zo = [r["token_norm"] for r in data["runs"] if r["method"] == "zoodip"]
    assert ti != zo


def test_fidelity_ablation_smoke(tmp_path):
    """--ablations varies one ZOODiP setting at a time; the default value is the one zoodip run."""
    p = fidelity("--size", "smoke", "--seeds", "0", "--ablations", "nu,n,cosine=0.02,random_subspace=4",
                 "--budget", "30",
                 "--out-dir", str(tmp_path))
    assert p.returncode == 0, p.stderr[-4000:]
    data = json.loads((tmp_path / "fidelity_ablations_smoke.json").read_text())
    assert set(data["summary"]) == {"zoodip", "nu=0.0001", "nu=0.01", "nu=0.1", "queries=1", "queries=4", "cosine_lr=0.02",
                                    "random_subspace_dim=4"}
    # the schedule ran: from 0.02 down to 0 at the last step; the others kept the paper's constant 5e-3
    final_lr = {r["variant"]: r["final_lr"] for r in data["runs"]}
    assert final_lr.pop("cosine_lr=0.02") < 1e-9 and set(final_lr.values()) == {5e-3}
    steps = {r["variant"]: r["steps"] for r in data["runs"]}
    assert steps["queries=1"] == 15 and steps["queries=4"] == 6 and steps["zoodip"] == 10
    assert steps["cosine_lr=0.02"] == 10 and all(r["forwards"] == 30 for r in data["runs"])
    # 10 steps in subspaces of 32 steps: one subspace; the other variants drew the paper's directions
    subspaces = {r["variant"]: r["random_subspaces"] for r in data["runs"]}
    assert subspaces.pop("random_subspace_dim=4") == 1 and set(subspaces.values()) == {0}
    assert data["variants"]["nu=0.1"]["nu"] == 0.1 and data["variants"]["nu=0.1"]["puts"] == [500, 900]
    md = (tmp_path / "fidelity_ablations_smoke.md").read_text()
    assert "Ablation: nu" in md and "0.001 (default)" in md
    assert (tmp_path / "fidelity_ablations_smoke.png").stat().st_size > 0


def test_fidelity_refuses_a_budget_that_does_not_divide(tmp_path):
    p = fidelity("--size", "smoke", "--ablations", "n", "--budget", "6", "--out-dir", str(tmp_path))
    assert p.returncode == 2 and "multiple of 5" in p.stderr, p.stderr[-2000:]
    assert not list(tmp_path.iterdir())  # refused before any work


def test_fidelity_takes_the_toy_steps_ti_lr_and_curve_it_is_given(tmp_path):
    """--toy-steps picks (and builds) another toy model, --ti-lr sets TI's step, --curve the judgements; all recorded."""
    p = fidelity("--size", "smoke", "--methods", "ti", "--seeds", "0", "--toy-steps", "3", "--ti-lr", "0.05",
                 "--curve", "1", "--out-dir", str(tmp_path))
    assert p.returncode == 0, p.stderr[-4000:]
    data = json.loads((tmp_path / "fidelity_smoke.json").read_text())
    assert data["toymodel"]["settings"]["steps"] == 3 and data["ti_lr"] == 0.05
    # --curve 1: judged once, at the end (the smoke size's default judges twice)
    assert data["judgements_along_budget"] == 1 and [len(r["curve"]) for r in data["runs"]] == [1]
    from benchmarks.toymodel import model

    assert data["checkpoint"] == model.checkpoint_path("smoke", model.settings_for("smoke", steps=3)).name
    assert data["checkpoint"] != model.checkpoint_path("smoke").name  # the steps are part of the cache key


def test_fidelity_refuses_bad_toy_steps_ti_lr_and_curve_before_any_work(tmp_path):
    for args, says in ((("--toy-steps", "0"), "--toy-steps must be >= 1"), (("--ti-lr", "0"), "--ti-lr must be > 0"),
                       (("--held-out", "pink,cross"), "COLOUR,SHAPE"),
                       (("--methods", "zoodip", "--curve", "3"), "--curve 3: the judgements must split"),
                       (("--curve", "0"), "--curve 0: the judgements must split")):
        p = fidelity("--size", "smoke", *args, "--out-dir", str(tmp_path / "out"))
        assert p.returncode == 2 and says in p.stderr, (args, p.stderr[-2000:])
    assert not (tmp_path / "out").exists()


def test_fidelity_scores_clip_i_and_t_through_evaluate_with_user_weights(tmp_path):
    """--clip-model: CLIP-I/CLIP-T per token and per caption, from the Evaluate Token node (a random
    open_clip model stands in for the user's weights)."""
    import open_clip
    import torch

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    (tmp_path / "zoodip-fid-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "zoodip-fid-clip.json")
    torch.manual_seed(0)
    weights = tmp_path / "zoodip-fid-clip.pt"
    torch.save(open_clip.create_model("zoodip-fid-clip", pretrained=None).state_dict(), weights)
    out = tmp_path / "out"
    p = fidelity("--size", "smoke", "--seeds", "0", "--methods", "zoodip,ti", "--clip-model", str(weights), "--out-dir", str(out))
    assert p.returncode == 0, p.stderr[-4000:]
    data = json.loads((out / "fidelity_smoke.json").read_text())
    scores = [(r["clip_i"], r["clip_t"]) for r in [*data["runs"], *data["baselines"].values()]]
    assert len(scores) == 2 + 4 and all(-1.0 <= v <= 1.0 for pair in scores for v in pair)
    assert len({s for s, _ in scores}) > 1  # scored per image set, not one constant
    assert "CLIP-I" in (out / "fidelity_smoke.md").read_text()


def test_fidelity_refuses_a_missing_clip_model(tmp_path):
    p = fidelity("--size", "smoke", "--clip-model", str(tmp_path / "nope.pt"), "--out-dir", str(tmp_path / "out"))
    assert p.returncode == 2 and "is not a file" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_ablation_plan_runs_each_default_once_and_keys_values():
    from benchmarks import fidelity as f

    groups = dict(f.plan(["zoodip"], ["puts_band", "tau", "n"]))
    assert list(groups)[0] == "zoodip" and groups["zoodip"] == f.method_config("zoodip")
    # each ablation's default value is the zoodip run, not a second copy of it
    assert "puts=500-900" not in groups and "tau=32" not in groups and "queries=2" not in groups
    assert groups["puts=0-1000"]["puts"] == (0, 1000) and groups["puts=0-1000"]["tau"] == f.ZO["tau"]
    assert groups["queries=4"]["queries"] == 4 and groups["tau=8"]["puts"] == f.ZO["puts"]
    assert f.ablation_key("puts", [500, 900]) == "zoodip" and f.ablation_key("nu", 1e-2) == "nu=0.01"
    # methods switch SG and PUTS as named
    assert f.method_config("vanilla")["puts"] is None and f.method_config("vanilla")["tau"] is None
    assert f.method_config("sg")["puts"] is None and f.method_config("sg")["tau"] == f.ZO["tau"]
    assert f.method_config("puts")["tau"] is None and f.method_config("puts")["puts"] == f.ZO["puts"]
    assert f.steps_for(f.method_config("ti"), 1200) == 400 and f.steps_for(f.method_config("ti_steps"), 1200) == 1200


def test_research_ablations_cost_what_they_evaluate():
    from benchmarks import fidelity as f

    groups = dict(f.plan(["zoodip"], ["lr", "two_sided"]))
    assert "learning_rate=0.005" not in groups and "two_sided=false" not in groups  # the defaults are zoodip
    assert groups["learning_rate=0.01"]["learning_rate"] == 0.01 and groups["two_sided=true"]["two_sided"] is True
    # two-sided n=2 evaluates 4 points per step (no clean point), one-sided n=2 evaluates 3
    assert f.steps_for(groups["two_sided=true"], 1200) == 300 and f.steps_for(groups["zoodip"], 1200) == 400
    # methods and ablations together, without zoodip: its runs come from another process (--merge)
    split = [k for k, _ in f.plan(["ti", "vanilla"], ["lr"])]
    assert split == ["ti", "vanilla", "learning_rate=0.0025", "learning_rate=0.01"]
    # name=v1/v2: only those values (the default, zoodip, is still left to the zoodip method)
    some = [k for k, _ in f.plan([], ["n=4", "lr=0.0025/0.005", "puts_band=250-750", "two_sided=true"])]
    assert some == ["queries=4", "learning_rate=0.0025", "puts=250-750", "two_sided=true"]
    import pytest

    for bad in ("n=four", "lr=", "two_sided=yes", "puts_band=700", "bogus=1"):
        with pytest.raises(ValueError):
            f.plan([], [bad])


def _result(runs, sha="abc", budget=1200):
    base = {"held_out_loss": 0.03, "accuracy": 0.1, "text": "x"}
    return {"size": "full", "budget_forwards": budget, "zo": {}, "ti_lr": 5e-3, "ti_cost_forwards": 3,
            "templates": [], "prompt": "p", "init_word": "object", "samples_per_judgement": 32,
            "concept": "purple cross", "weights_sha256": sha, "seconds": 10.0,
            "classifier_test_accuracy": {"both": 0.99}, "variants": {}, "ablations": {},
            "baselines": {"concept_words": base, "wrong_caption": base}, "runs": runs}


def _run(method, seed, curve, cpu):
    return {"method": method, "variant": method, "seed": seed, "accuracy": curve[-1], "held_out_loss": 0.02,
            "forwards": 400, "steps": 400, "forward_equivalents": 1200, "train_seconds": cpu, "train_cpu_seconds": cpu,
            "curve": [{"forward_equivalents": 300 * (i + 1), "accuracy": a, "held_out_loss": 0.02}
                      for i, a in enumerate(curve)]}


def test_merge_joins_parallel_results_and_times_the_reach_of_ti_final():
    from benchmarks import fidelity as f

    ti = _result([_run("ti", 0, [0.2, 0.5, 0.8, 0.8], 100.0), _run("ti", 1, [0.2, 0.5, 0.8, 0.8], 100.0)])
    zo = _result([_run("zoodip", 0, [0.1, 0.3, 0.5, 0.9], 80.0), _run("zoodip", 1, [0.1, 0.3, 0.5, 0.7], 80.0)])
    merged = f.merge([ti, zo])
    s = merged["summary"]
    assert {r["method"] for r in merged["runs"]} == {"ti", "zoodip"} and merged["merged_from"] == 2
    # TI's mean curve first reaches its final 80% at 3/4 of its run: 75 s; ZOODiP's mean only at the end: 80 s
    assert s["ti"]["cpu_seconds_to_ti_final"] == 75.0 and s["zoodip"]["cpu_seconds_to_ti_final"] == 80.0
    assert abs(s["zoodip"]["time_to_ti_final_vs_ti"] - 80 / 75) < 1e-12
    assert "1.07x TI" in f.table(merged)
    slow = _result([_run("zoodip", 0, [0.1, 0.2, 0.3, 0.4], 80.0)])
    assert f.merge([ti, slow])["summary"]["zoodip"]["cpu_seconds_to_ti_final"] is None
    assert "not reached" in f.table(f.merge([ti, slow]))


def test_merge_refuses_results_that_measure_different_things():
    import pytest

    from benchmarks import fidelity as f

    a = _result([_run("ti", 0, [0.5] * 4, 1.0)])
    with pytest.raises(ValueError, match="weights_sha256"):
        f.merge([a, _result([_run("zoodip", 0, [0.5] * 4, 1.0)], sha="other")])
    with pytest.raises(ValueError, match="budget_forwards"):
        f.merge([a, _result([_run("zoodip", 0, [0.5] * 4, 1.0)], budget=600)])
    with pytest.raises(ValueError, match="more than one result"):
        f.merge([a, _result([_run("ti", 0, [0.5] * 4, 1.0)])])


def test_an_ablation_stopped_before_its_values_gets_no_table_or_panel(tmp_path):
    from benchmarks import fidelity as f

    stopped = _result([_run("ti", 0, [0.5] * 4, 1.0), _run("zoodip", 0, [0.5] * 4, 1.0)])
    stopped.update(ablations={"n": "queries"}, seeds=[0])  # queued n=4, stopped before it ran
    stopped["baselines"]["init_word"] = stopped["baselines"]["concept_words"]  # the curve plot starts there
    stopped["summary"] = f.summarize(stopped)
    assert f.measured_ablations(stopped) == {}
    assert "Ablation: n" not in f.table(stopped)
    f.draw(stopped, tmp_path / "fidelity.json")
    assert not (tmp_path / "fidelity.png").exists() and (tmp_path / "fidelity_curve.png").exists()
    ran = _result(stopped["runs"] + [dict(_run("zoodip", 0, [0.6] * 4, 1.0), variant="queries=4")])
    ran.update(ablations={"n": "queries"}, seeds=[0])
    ran["summary"] = f.summarize(ran)
    assert f.measured_ablations(ran) == {"n": "queries"} and "Ablation: n" in f.table(ran)


def test_ablation_tables_show_merged_values_and_the_default_of_a_new_setting(tmp_path):
    from benchmarks import fidelity as f

    def variant(key, acc):
        return dict(_run("zoodip", 0, [acc] * 4, 1.0), variant=key)

    # lr=0.02 is not in ABLATIONS["lr"] but was run with --ablations lr=0.02 and merged in
    lr = _result([variant("zoodip", 0.5), variant("learning_rate=0.01", 0.6), variant("learning_rate=0.02", 0.7)])
    lr.update(ablations={"lr": "learning_rate"}, variants=dict(f.plan([], ["lr=0.01/0.02"])), seeds=[0])
    lr["summary"] = f.summarize(lr)
    assert f.ablation_values(lr, "lr") == [2.5e-3, 5e-3, 1e-2, 2e-2]
    rows = [line.split(" | ")[0] for line in f.table(lr).split("Ablation: lr")[1].splitlines() if line.startswith("| 0")]
    assert rows == ["| 0.005 (default)", "| 0.01", "| 0.02"]
    # a schedule the paper's method lacks: its rows follow the default's (constant lr), marked as such
    groups = dict(f.plan([], ["cosine=0.02"]))
    assert list(groups) == ["cosine_lr=0.02"] and groups["cosine_lr=0.02"]["cosine_lr"] == 0.02
    assert f.ablation_key("cosine_lr", 0.02) == "cosine_lr=0.02" and f.steps_for(groups["cosine_lr=0.02"], 1200) == 400
    cos = _result([variant("zoodip", 0.5), variant("cosine_lr=0.02", 0.8)])
    cos.update(ablations={"cosine": "cosine_lr"}, variants=groups, seeds=[0])
    cos["summary"] = f.summarize(cos)
    section = f.table(cos).split("Ablation: cosine")[1]
    assert "| none (default) | 1 |" in section and "| 0.02 | 1 |" in section
    assert section.index("none (default)") < section.index("| 0.02 |")
    # and its panel draws the default's bar (red) beside the schedule's (blue)
    assert f.ablation_values(cos, "cosine") == [None, 1e-2, 2e-2]
    from PIL import Image

    colours = {c for _, c in Image.open(f.plot_ablations(cos, tmp_path / "cos.png")).getcolors(1 << 16)}
    assert {(200, 60, 40), (40, 90, 200)} <= colours


def test_an_ablation_value_that_is_not_positive_is_refused():
    import benchmarks.fidelity as f

    # random_subspace=0 would otherwise run the paper's directions under another name
    for text in ("random_subspace=0", "n=0", "mu=-0.001", "tau=8/0"):
        with pytest.raises(ValueError, match="is not a value of"):
            f.parse_ablation(text)
    assert f.parse_ablation("random_subspace=64/256") == ("random_subspace", [64, 256])


def test_random_subspace_directions_keep_one_basis_per_block_and_the_paper_s_second_moment():
    import torch

    import benchmarks.fidelity as f

    d = f.RandomSubspaceDirections(n=2, dim=3, every=4, seed=7)
    block = [d((1, 16), s) for s in range(100, 104)]  # 4 steps: one basis
    assert torch.equal(d((1, 16), 101), block[1])  # estimate asks for a step's seed again: the same u
    assert block[0].shape == (2, 1, 16) and d.steps == 4 and d.subspaces == 1
    stacked = torch.cat(block).reshape(-1, 16).double()
    assert torch.linalg.matrix_rank(stacked, rtol=1e-5) == 3  # 8 directions, all in the 3-d subspace
    nxt = d((1, 16), 200).reshape(-1, 16).double()  # step 5: a new basis
    assert d.subspaces == 2 and torch.linalg.matrix_rank(torch.cat([stacked, nxt]), rtol=1e-5) > 3
    assert torch.equal(f.RandomSubspaceDirections(2, 3, 4, 7)((1, 16), 100), block[0])  # seeded

    # over fresh bases, E[u u^T] = I, as for N(0, I) directions: mu and lr keep their meaning
    fresh = f.RandomSubspaceDirections(n=2, dim=3, every=1, seed=0)
    u = torch.cat([fresh((16,), s) for s in range(3000)]).double()
    second = u.T @ u / u.shape[0]
    assert (second - torch.eye(16, dtype=torch.float64)).abs().max() < 0.25
    with pytest.raises(ValueError, match="must be >= 1"):
        f.RandomSubspaceDirections(2, 0, 4, 7)
