"""The settings table: every declared limit is enforced by the engine, with the user's value."""

from __future__ import annotations

import argparse
import math

import pytest

from zoodip import settings as S
from zoodip.settings import SETTINGS, PUTSConfig, SubspaceConfig, TrainSettings

NUMBERS = [s for s in SETTINGS.values() if s.kind in (int, float)]


def _bad_values(s):
    """Values just outside each declared limit, and the non-finite ones for floats."""
    out = []
    if s.min is not None:
        out.append(s.min if s.min_exclusive else (s.min - 1 if s.kind is int else s.min - abs(s.min) * 0.5 - 1e-9))
    if s.max is not None:
        out.append(s.max if s.max_exclusive else (s.max + 1 if s.kind is int else s.max * 2 + 1))
    if s.kind is float:
        out += [math.inf, -math.inf, math.nan]
    return out


@pytest.mark.parametrize("s", SETTINGS.values(), ids=lambda s: s.name)
def test_defaults_pass_their_own_checks(s):
    assert s.check(s.default) == s.default or (s.kind is float and s.check(s.default) == pytest.approx(s.default))
    assert len(s.help) > 20


@pytest.mark.parametrize("s", NUMBERS, ids=lambda s: s.name)
def test_every_declared_limit_is_refused_with_the_users_value(s):
    for value in _bad_values(s):
        with pytest.raises(ValueError) as e:
            s.check(value)
        msg = str(e.value)
        assert msg.startswith(s.what), msg
        assert S.fmt(value) in msg or repr(value) in msg, f"{value!r} not quoted in: {msg}"
    for value in (s.min, s.max):  # the limits themselves, unless exclusive
        if value is not None and not (value == s.min and s.min_exclusive) and not (value == s.max and s.max_exclusive):
            s.check(value)


def test_train_settings_validate_enforces_the_table():
    # the engine's defaults are the table's: one default per setting (0.1.0 had steps 1000 here)
    t = TrainSettings(token_name="x")
    for name in ("init_word", "num_vectors", "steps", "learning_rate", "queries", "perturbation", "seed",
                 "two_sided", "query_batch"):
        assert getattr(t, name) == SETTINGS[name].default, name
    assert t.steps == 30000
    t.validate()
    for name, value, words in [
        ("learning_rate", 1e9, "learning_rate must be at least 1e-08 and at most 10, got 1e+09"),
        ("perturbation", math.inf, "perturbation (mu) is inf"),
        ("perturbation", math.nan, "perturbation (mu) is nan"),
        ("steps", 0, "steps must be at least 1"),
        ("queries", 65, "queries (n) must be at least 1 and at most 64, got 65"),
        ("query_batch", -1, "query_batch must be 0"),
        ("seed", -1, "seed must be at least 0"),
    ]:
        with pytest.raises(ValueError, match=None) as e:
            TrainSettings(token_name="x", **{name: value}).validate()
        assert words in str(e.value)
    with pytest.raises(ValueError, match="tau must be at least 2 and at most 4096, got 1000000000000"):
        TrainSettings(token_name="x", subspace=SubspaceConfig(10**12, 1e-3)).validate()
    with pytest.raises(ValueError, match="nu is nan: give a finite number strictly between 0 and 1"):
        TrainSettings(token_name="x", subspace=SubspaceConfig(128, math.nan)).validate()
    # PUTS above 1000 is refused with the user's value, never clamped
    with pytest.raises(ValueError, match="t_max must be at least 1 and at most 1000, got 5000"):
        TrainSettings(token_name="x", puts=PUTSConfig(500, 5000)).validate()
    with pytest.raises(ValueError, match="set t_min below t_max"):
        PUTSConfig(900, 500).validate()


def test_paper_values_per_family():
    assert S.paper_value("perturbation", "SD1.x") == 1e-3
    assert S.paper_value("perturbation", "SDXL") == 1e-2
    assert S.paper_value("t_max", "SDXL") == 700 and S.paper_value("t_max", "SD2.x") == 900
    assert S.paper_value("steps") == 30000
    assert "1e-3" in SETTINGS["perturbation"].paper_text().replace("0.001", "1e-3")


def test_cli_options_come_from_the_table():
    p = argparse.ArgumentParser()
    S.add_arguments(p, ["learning_rate", "perturbation", "steps", "two_sided"])
    opts = p.parse_args([])
    assert (opts.lr, opts.mu, opts.steps, opts.two_sided) == (5e-3, 1e-3, 30000, False)
    assert S.dest("learning_rate") == "lr" and S.dest("perturbation") == "mu"
    assert p.parse_args(["--lr", "0.01"]).lr == 0.01
    for bad in (["--lr", "1e9"], ["--mu", "nan"], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
