"""A run's settings, checked before any expensive work, and recorded in the saved file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .files import check_name
from .templates import parse_templates

MAX_VECTORS = 75  # CLIP's 77-token window minus start and end tokens


@dataclass
class PUTSConfig:
    t_min: int = 500
    t_max: int = 900

    def validate(self) -> None:
        if not 0 <= self.t_min < self.t_max:
            raise ValueError(
                f"PUTS needs 0 <= t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}: "
                "set t_min below t_max (the paper uses 500 and 900)"
            )


@dataclass
class SubspaceConfig:
    tau: int = 128
    nu: float = 1e-3

    def validate(self) -> None:
        if self.tau < 2:
            raise ValueError(f"tau must be at least 2 (trajectory points per SVD), got {self.tau}; the paper uses 128")
        if not 0 < self.nu < 1:
            raise ValueError(f"nu must be strictly between 0 and 1 (a variance fraction), got {self.nu}; the paper uses 1e-3")


@dataclass
class TrainSettings:
    token_name: str
    init_word: str = "*"
    num_vectors: int = 1
    steps: int = 1000
    learning_rate: float = 5e-3
    queries: int = 2
    perturbation: float = 1e-3
    seed: int = 0
    two_sided: bool = False
    puts: PUTSConfig | None = None
    subspace: SubspaceConfig | None = None
    prompt_templates: str = ""
    # queries per UNet call: 2 is the batch a CFG sampler runs, so training peaks at sampling's
    # memory; 0 = every query in one call (faster where memory is plentiful)
    query_batch: int = 2

    def validate(self) -> list[str]:
        """Raise ValueError naming the first bad setting; return the parsed templates."""
        check_name(self.token_name, "token_name")
        if not self.init_word or not self.init_word.strip():
            raise ValueError("init_word is empty: give a word close to the subject, e.g. 'dog' (or '*')")
        if not 1 <= self.num_vectors <= MAX_VECTORS:
            raise ValueError(f"num_vectors must be between 1 and {MAX_VECTORS}, got {self.num_vectors}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.queries < 1:
            raise ValueError(f"queries (n) must be at least 1, got {self.queries}; the paper uses 1 or 2")
        if self.query_batch < 0:
            raise ValueError(
                f"query_batch must be 0 (all queries in one UNet call) or a batch size, got {self.query_batch}; "
                "2 keeps training at sampling's memory"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}; the paper uses 5e-3")
        if not self.perturbation > 0:
            raise ValueError(f"perturbation (mu) must be > 0, got {self.perturbation}; the paper uses 1e-3")
        if self.puts is not None:
            self.puts.validate()
        if self.subspace is not None:
            self.subspace.validate()
        return parse_templates(self.prompt_templates)

    def to_metadata(self) -> dict[str, str]:
        d = asdict(self)
        return {"zoodip.settings": json.dumps(d, sort_keys=True), "zoodip.method": "ZOODiP (arXiv 2503.14868)"}
