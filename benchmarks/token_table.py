"""How much structure a checkpoint's token table has: the share of its variance in its top-k
principal directions, against an isotropic table's k/D.

Issue 15 asks whether perturbing a token only within a low-dimensional subspace built from the
text encoder's own token table would help zeroth-order training. That can only help where the
table has such a subspace: where a few directions hold much more than k/D of the variance. The toy
model's CLIP has seeded random weights, so its table is expected to be isotropic; run it on a real
checkpoint to see what such a subspace would hold there.

    python -m benchmarks.token_table CHECKPOINT.safetensors [--ks 8,32,64,128,384] [--out JSON]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import write_json

KS = (8, 32, 64, 128, 384)


def _explained(table: torch.Tensor, ks: list[int]) -> list[float]:
    x = table.double()
    x = x - x.mean(dim=0)
    ev = torch.linalg.eigvalsh(x.T @ x).flip(0).clamp_min(0)  # (D,): the D x D Gram is small, V may be 49408
    total = float(ev.sum())
    return [float(ev[:k].sum()) / total for k in ks]


def spectrum(table: torch.Tensor, ks: tuple[int, ...] = KS) -> dict[str, Any]:
    """Top-k explained variance of the rows of ``table`` (V, D), against k/D and against a Gaussian
    table of the same shape (a finite table spreads even isotropic eigenvalues a little)."""
    if table.ndim != 2 or table.shape[0] < 2:
        raise ValueError(f"expected a token table of shape (vocabulary, width), got {tuple(table.shape)}")
    width = table.shape[1]
    ks_ = [k for k in ks if k <= width]
    gaussian = torch.randn(tuple(table.shape), generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    rows = [{"k": k, "explained": e, "isotropic": k / width, "gaussian_table": g}
            for k, e, g in zip(ks_, _explained(table, ks_), _explained(gaussian, ks_))]
    return {"shape": list(table.shape), "rows": rows}


def find_table(path: Path) -> tuple[str, torch.Tensor]:
    """The first token embedding table in a safetensors checkpoint (SD1.x/2.x/SDXL key names)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        names = [k for k in f.keys() if k.endswith("token_embedding.weight")]
        if not names:
            raise ValueError(f"{path} has no '*token_embedding.weight' tensor: give a checkpoint with a text encoder")
        return names[0], f.get_tensor(names[0])


def table(result: dict[str, Any]) -> str:
    lines = [f"token table {result['key']} {tuple(result['shape'])}", "",
             "| top k directions | variance explained | isotropic (k/D) | a Gaussian table of the same shape |",
             "|---|---|---|---|"]
    lines += [f"| {r['k']} | {r['explained']:.1%} | {r['isotropic']:.1%} | {r['gaussian_table']:.1%} |"
              for r in result["rows"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--ks", default=",".join(map(str, KS)), help="comma-separated numbers of directions")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    a = p.parse_args(argv)
    try:
        ks = tuple(int(k) for k in a.ks.split(","))
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        p.error(f"--ks must be comma-separated whole numbers of directions >= 1, got {a.ks!r}")
    if not a.checkpoint.is_file():
        p.error(f"{a.checkpoint} is not a file: give a .safetensors checkpoint")
    try:
        key, weights = find_table(a.checkpoint)
    except ValueError as e:
        p.error(str(e))
    result = {"checkpoint": a.checkpoint.name, "key": key, **spectrum(weights, ks)}
    print(table(result))
    if a.out is not None:
        write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
