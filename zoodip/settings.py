"""Every setting of a run, declared once; checked before any expensive work and recorded in the saved file.

``SETTINGS`` is the one declaration of each setting a user can give (name, type, default, range,
help text, the paper's value per model family, the command-line flag). Everything else derives
from it: the nodes' input schema (``nodes/schema.py``), the ``python -m zoodip`` options
(:func:`add_arguments`), the checks below (:meth:`Setting.check`, used by ``TrainSettings.validate``
and by the nodes when a prompt is queued) and the node reference (``devtools/docs.py`` writes the
tables in ``web/docs/*.md`` and ``docs/nodes.md``; a test keeps them equal). Plain python: the
engine imports nothing from ComfyUI.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .files import check_name
from .templates import DEFAULT_TEMPLATES_TEXT, parse_templates

MAX_VECTORS = 75  # CLIP's 77-token window minus start and end tokens
FAMILIES = ("SD1.x", "SD2.x", "SDXL")
# The lower limit of a step size that must be > 0 (learning_rate, mu), declared as a number so the
# host checks it when a prompt is queued; smaller steps are lost in float32 rounding anyway.
MIN_POSITIVE = 1e-8


@dataclass(frozen=True)
class Setting:
    """One user-facing setting: what the node shows, the CLI takes and the checks enforce."""

    name: str  # the node input, the TrainSettings field, the key in the saved metadata
    kind: type  # int, float, bool or str
    default: Any
    help: str  # the tooltip and the CLI help: what it does, in a sentence or two
    doc: str = ""  # more for the node reference: why this default, what it costs
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False  # the value must be above ``min``, not equal to it
    max_exclusive: bool = False
    step: float | None = None  # the widget's step
    multiple_of: int | None = None  # refused unless a multiple of this
    label: str = ""  # how messages name it, e.g. "perturbation (mu)"; default: the name
    paper: Any = None  # the paper's value: one value, or {family: value}
    flag: str | None = None  # the ``python -m zoodip train`` option, if it has one
    metavar: str | None = None
    multiline: bool = False
    zero: str = ""  # what 0 means, when it is a switch ("off")
    extra: dict = field(default_factory=dict)  # widget options that are no limit (round), doc_default

    @property
    def what(self) -> str:
        return self.label or self.name

    def paper_value(self, family: str | None = None) -> Any:
        """The paper's value, for ``family`` when it differs between families."""
        if isinstance(self.paper, dict):
            return self.paper.get(family) if family else self.paper.get(FAMILIES[0])
        return self.paper

    def paper_text(self) -> str:
        """``the paper uses 1e-3 (SD1.x), 1e-2 (SD2.x, SDXL)`` or ``""``."""
        if self.paper is None:
            return ""
        if not isinstance(self.paper, dict):
            return f"the paper uses {fmt(self.paper)}"
        by_value: dict[str, list[str]] = {}
        for fam, v in self.paper.items():
            by_value.setdefault(fmt(v), []).append(fam)
        return "the paper uses " + ", ".join(f"{v} ({', '.join(f)})" for v, f in by_value.items())

    def range_text(self) -> str:
        """``at least 1 and at most 75``, ``> 0 and at most 10``, ``strictly between 0 and 1``."""
        lo, hi = self.min, self.max
        if self.zero and lo == 0 and hi is not None:
            return f"0 ({self.zero}) or a number up to {fmt(hi)}"
        if lo is not None and hi is not None and self.min_exclusive and self.max_exclusive:
            return f"strictly between {fmt(lo)} and {fmt(hi)}"
        parts = []
        if lo is not None:
            parts.append(f"> {fmt(lo)}" if self.min_exclusive else f"at least {fmt(lo)}")
        if hi is not None:
            parts.append(f"below {fmt(hi)}" if self.max_exclusive else f"at most {fmt(hi)}")
        text = " and ".join(parts)
        if self.multiple_of:
            text = f"a multiple of {self.multiple_of}" + (f", {text}" if text else "")
        return text

    def check(self, value: Any) -> Any:
        """``value`` converted to the setting's type, or ValueError with the user's value and what to do."""
        hint = f" ({self.paper_text()})" if self.paper is not None else ""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{self.what} must be true or false, got {value!r}")
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise ValueError(f"{self.what} must be text, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.what} must be a number, got {value!r}: give a number {self.range_text()}{hint}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{self.what} is {value!r}: give a finite number {self.range_text()}{hint}")
        if self.kind is int:
            if value != int(value):
                raise ValueError(f"{self.what} must be a whole number, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        lo, hi = self.min, self.max
        bad = (
            (lo is not None and (value < lo or (self.min_exclusive and value == lo)))
            or (hi is not None and (value > hi or (self.max_exclusive and value == hi)))
            or (self.multiple_of and value % self.multiple_of)
        )
        if bad:
            raise ValueError(f"{self.what} must be {self.range_text()}, got {fmt(value)}: set {self.name} in that range{hint}")
        return value

    def parse(self, text: str) -> Any:
        """For argparse: the option's text converted and checked (ArgumentTypeError otherwise)."""
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{self.what} must be a {self.kind.__name__}, got {text!r}") from None
        try:
            return self.check(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None


def fmt(v: Any) -> str:
    """A number as people write it: 0.005, 1e-08, 30000."""
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _settings(*items: Setting) -> dict[str, Setting]:
    return {s.name: s for s in items}


SETTINGS: dict[str, Setting] = _settings(
    # -- ZOODiP Train Token ---------------------------------------------------------------------
    Setting(
        "token_name", str, "my-token",
        "The new word. Use it in prompts as embedding:<token_name>. Letters, digits, - _ . only.",
        doc="Also the file name, so what is saved is exactly what you type.",
        flag="--token", metavar="NAME",
    ),
    Setting(
        "init_word", str, "*",
        "A word close to the subject (e.g. 'dog'); its token vectors are the starting point. Several tokens fill "
        "several vectors.",
        doc="The paper initializes from the class word.",
        flag="--init-word", metavar="WORD",
    ),
    Setting(
        "num_vectors", int, 1,
        "Vectors the token uses (each takes one of the prompt's 75 token slots).",
        min=1, max=MAX_VECTORS, paper=1, flag="--num-vectors", metavar="N",
    ),
    Setting(
        "steps", int, 30000,
        "Total training steps. A resumed run continues up to this total.",
        doc="About 31 minutes at n=2 on an RTX 3090 in the paper.",
        min=1, max=10_000_000, paper=30000, flag="--steps",
    ),
    Setting(
        "learning_rate", float, 5e-3,
        "Adam learning rate (betas 0.9/0.999, eps 1e-3 as in the paper).",
        min=MIN_POSITIVE, max=10.0, step=1e-4, paper=5e-3, flag="--lr", extra={"round": False},
    ),
    Setting(
        "queries", int, 2,
        "n, random directions per step; a step costs n+1 forward passes.",
        doc="The paper's ablation (CLIP-I): n=1 0.736, n=2 0.796, n=4 0.784, n=8 0.798, so 2 is the best value "
            "for its cost.",
        min=1, max=64, label="queries (n)", paper=2, flag="--queries", metavar="N",
    ),
    Setting(
        "perturbation", float, 1e-3,
        "mu, the size of each random probe of the token.",
        doc="1e-2 is also the paper's value for int4 models.",
        min=MIN_POSITIVE, max=10.0, step=1e-4, label="perturbation (mu)",
        paper={"SD1.x": 1e-3, "SD2.x": 1e-2, "SDXL": 1e-2}, flag="--mu", extra={"round": False},
    ),
    Setting(
        "seed", int, 0,
        "Seeds every random draw (directions, photos, noise, timesteps): the same seed and inputs give the same "
        "token, bit for bit.",
        min=0, max=0xFFFFFFFFFFFFFFFF, flag="--seed",
    ),
    Setting(
        "prompt_templates", str, DEFAULT_TEMPLATES_TEXT,
        "One prompt per line, each with {token} exactly once. Empty uses the 27 standard object templates.",
        doc="Each step draws one.", multiline=True, extra={"doc_default": "the 27 standard object templates"},
    ),
    Setting(
        "two_sided", bool, False,
        "Two-sided estimate: 2n forward passes per step instead of n+1, less biased.",
        doc="Twice the cost at n=1. The paper uses the one-sided estimate.", flag="--two-sided",
    ),
    Setting(
        "held_out_every", int, 0,
        "Every K steps, also measure the loss on 4 fixed draws (same photo, noise and timestep each time); a less "
        "noisy curve for Loss Graph. 0 = off.",
        min=0, max=1_000_000, zero="off",
    ),
    Setting(
        "save_every", int, 0,
        "Every K steps, save the token and its training state to models/embeddings/zoodip-runs/<token_name>/"
        "step-<k>.safetensors (Load Embedding lists it; connect it to resume to continue). Cancel saves one too. "
        "0 = off.",
        min=0, max=10_000_000, zero="off", flag="--save-every", metavar="K",
    ),
    Setting(
        "preview_every", int, 0,
        "Every K steps, sample a small image with the token as it is (8 steps, fixed seed, the photos' size): "
        "shown as the live preview and in the node, and returned as the previews output. 0 = off.",
        doc="Each preview costs a short sampling run, so it is off by default.",
        min=0, max=10_000_000, zero="off",
    ),
    Setting(
        "preview_prompt", str, "a photo of {token}",
        "The prompt of the previews; {token} stands for embedding:<token_name>.",
    ),
    Setting(
        "query_batch", int, 2,
        "Queries per UNet call. 2 (default) is the batch a CFG sampler runs, so training needs about the memory "
        "sampling needs; 0 sends all n+1 queries in one call (a little faster, more memory).",
        min=0, max=64, zero="all queries in one UNet call", flag="--query-batch", metavar="B",
    ),
    # -- PUTS Sampler Config ---------------------------------------------------------------------
    Setting(
        "t_min", int, 500,
        "Lowest training timestep drawn, of the model's 1000. Small t carries little about the concept.",
        doc="Below it the token hardly affects the prediction.",
        min=0, max=999, paper=500,
    ),
    Setting(
        "t_max", int, 900,
        "Timesteps are drawn below this, of the model's 1000. Large t is nearly pure noise.",
        doc="Above it the input is almost pure noise.",
        min=1, max=1000, paper={"SD1.x": 900, "SD2.x": 900, "SDXL": 700},
    ),
    # -- Subspace Projector -----------------------------------------------------------------------
    Setting(
        "tau", int, 128,
        "Trajectory points per SVD, and steps between refreshes of the subspace.",
        doc="For runs of a few hundred steps, a smaller tau lets the projector start earlier.",
        min=2, max=4096, paper=128, flag="--tau",
    ),
    Setting(
        "nu", float, 1e-3,
        "Variance fraction treated as noise: directions beyond 1 - nu of the explained variance are projected out.",
        doc="1e-3 keeps the directions that explain 99.9% of the trajectory's variance.",
        min=0.0, max=1.0, min_exclusive=True, max_exclusive=True, step=1e-4, paper=1e-3, flag="--nu",
        extra={"round": False},
    ),
    # -- Load Training Images, Loss Graph ---------------------------------------------------------
    Setting(
        "resolution", int, 512,
        "Side of the square training images (512 for SD1.5, 1024 for SDXL).",
        doc="The VAE encodes them once per run.",
        min=64, max=4096, step=8, multiple_of=8, flag="--resolution",
    ),
    Setting(
        "smoothing", float, 0.9,
        "Weight of the moving average drawn over the noisy per-step loss (0 = none).",
        doc="0.9 averages over roughly the last 10 steps, enough to see a trend through the per-step noise without "
            "hiding it.",
        min=0.0, max=0.999, step=0.01,
    ),
)


def paper_value(name: str, family: str | None = None) -> Any:
    """The paper's value of a setting (for ``family`` where it differs), e.g. ``paper_value("t_max", "SDXL")``."""
    return SETTINGS[name].paper_value(family)


def check(name: str, value: Any) -> Any:
    return SETTINGS[name].check(value)


def add_arguments(parser: Any, names: Iterable[str], required: Iterable[str] = (),
                  by_family: Iterable[str] = ()) -> None:
    """Add the settings ``names`` as options of an argparse parser or group, from the table.

    The option's dest is argparse's own (``--lr`` -> ``lr``); :func:`dest` gives it. Values are
    checked as they are parsed, so a bad one is refused with argparse's exit status 2. An option in
    ``by_family`` defaults to None: the caller fills in the paper's value for the model's family.
    """
    required, by_family = set(required), set(by_family)
    for name in names:
        s = SETTINGS[name]
        if s.flag is None:
            raise ValueError(f"{name} has no command-line flag")
        text = s.help
        if s.kind is bool:
            parser.add_argument(s.flag, action="store_true", help=_escape(text))
            continue
        if name in required:
            parser.add_argument(s.flag, required=True, metavar=s.metavar, help=_escape(text))
            continue
        notes = []
        if s.kind is str and not s.multiline:
            notes.append(f"default: {s.default}")
        if s.kind is not str:
            notes.append("default: the paper's value for the checkpoint's family" if name in by_family
                         else f"default: {fmt(s.default)}")
            rng = s.range_text()
            if rng:
                notes.append(rng)
            if s.paper is not None:
                notes.append(s.paper_text())
        if notes:
            text += " (" + "; ".join(notes) + ")"
        default = None if name in by_family else s.default
        parser.add_argument(s.flag, type=s.parse, default=default, metavar=s.metavar, help=_escape(text))


def dest(name: str) -> str:
    """The argparse dest of a setting's option (``learning_rate`` -> ``lr``)."""
    return SETTINGS[name].flag.lstrip("-").replace("-", "_")


def _escape(text: str) -> str:
    return text.replace("%", "%%")


@dataclass
class PUTSConfig:
    t_min: int = SETTINGS["t_min"].default
    t_max: int = SETTINGS["t_max"].default

    def validate(self) -> None:
        self.t_min = check("t_min", self.t_min)
        self.t_max = check("t_max", self.t_max)
        if not self.t_min < self.t_max:
            raise ValueError(
                f"PUTS needs 0 <= t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}: set t_min below t_max "
                f"(t_min: {SETTINGS['t_min'].paper_text()}; t_max: {SETTINGS['t_max'].paper_text()})"
            )


@dataclass
class SubspaceConfig:
    tau: int = SETTINGS["tau"].default
    nu: float = SETTINGS["nu"].default

    def validate(self) -> None:
        self.tau = check("tau", self.tau)
        self.nu = check("nu", self.nu)


@dataclass
class TrainSettings:
    token_name: str
    init_word: str = SETTINGS["init_word"].default
    num_vectors: int = SETTINGS["num_vectors"].default
    steps: int = SETTINGS["steps"].default
    learning_rate: float = SETTINGS["learning_rate"].default
    queries: int = SETTINGS["queries"].default
    perturbation: float = SETTINGS["perturbation"].default
    seed: int = SETTINGS["seed"].default
    two_sided: bool = SETTINGS["two_sided"].default
    puts: PUTSConfig | None = None
    subspace: SubspaceConfig | None = None
    prompt_templates: str = SETTINGS["prompt_templates"].default  # empty also means the standard templates
    # queries per UNet call: 2 is the batch a CFG sampler runs, so training peaks at sampling's
    # memory; 0 = every query in one call (faster where memory is plentiful)
    query_batch: int = SETTINGS["query_batch"].default

    def validate(self) -> list[str]:
        """Raise ValueError naming the first bad setting (every declared limit, no inf/nan); return the templates."""
        check_name(self.token_name, "token_name")
        if not isinstance(self.init_word, str) or not self.init_word.strip():
            raise ValueError("init_word is empty: give a word close to the subject, e.g. 'dog' (or '*')")
        for name in _CHECKED:
            setattr(self, name, check(name, getattr(self, name)))
        if self.puts is not None:
            self.puts.validate()
        if self.subspace is not None:
            self.subspace.validate()
        return parse_templates(self.prompt_templates)

    def to_metadata(self) -> dict[str, str]:
        d = asdict(self)
        return {"zoodip.settings": json.dumps(d, sort_keys=True), "zoodip.method": "ZOODiP (arXiv 2503.14868)"}


# TrainSettings fields that are table settings with limits (token_name, init_word and the templates
# have their own checks), checked against their declaration
_CHECKED = tuple(f.name for f in fields(TrainSettings) if f.name in SETTINGS and SETTINGS[f.name].kind is not str)
