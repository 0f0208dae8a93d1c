"""benchmarks/token_table.py, the instrument behind "a token-table subspace has nothing to offer on
the toy": shown tables whose answer is known, including one that fools an uncentred measure."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from benchmarks import token_table


def _explained(result, k):
    return next(r["explained"] for r in result["rows"] if r["k"] == k)


def test_isotropic_table_holds_k_over_d_and_a_low_rank_one_far_more():
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(4000, 64, generator=g)
    r = token_table.spectrum(iso, (8, 32))
    # (a finite sample spreads the eigenvalues a little: 4000 rows of 64 put ~55% in the top half)
    assert abs(_explained(r, 8) - 8 / 64) < 0.05 and abs(_explained(r, 32) - 0.5) < 0.08
    # 8 strong directions under weak noise: the top 8 hold nearly everything
    assert abs(r["rows"][1]["gaussian_table"] - _explained(r, 32)) < 0.01  # the reference is such a table
    low = torch.randn(4000, 8, generator=g) @ torch.randn(8, 64, generator=g) * 3 + 0.1 * iso
    rl = token_table.spectrum(low, (8,))
    assert _explained(rl, 8) > 0.95 and rl["rows"][0]["gaussian_table"] < 0.2


def test_a_shared_offset_is_not_structure():
    # every row shifted by one large vector: uncentred, that direction would "explain" almost all
    g = torch.Generator().manual_seed(1)
    shifted = torch.randn(4000, 64, generator=g) + 50.0
    assert abs(_explained(token_table.spectrum(shifted, (8,)), 8) - 8 / 64) < 0.05


def test_cli_reads_the_checkpoint_table_and_refuses_one_without(tmp_path, capsys):
    g = torch.Generator().manual_seed(2)
    ckpt = tmp_path / "m.safetensors"
    save_file({"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.randn(500, 32, generator=g),
               "other.weight": torch.zeros(3)}, str(ckpt))
    out = tmp_path / "spectrum.json"
    assert token_table.main([str(ckpt), "--ks", "4,16", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["shape"] == [500, 32] and [r["k"] for r in data["rows"]] == [4, 16]
    assert "| 16 |" in capsys.readouterr().out
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(2)}, str(bare))
    with pytest.raises(SystemExit):
        token_table.main([str(bare)])
    assert "no '*token_embedding.weight'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="vocabulary, width"):
        token_table.spectrum(torch.zeros(5))
    for bad in ("0,8", "-4", "8,x", ""):
        with pytest.raises(SystemExit):
            token_table.main([str(ckpt), "--ks", bad])
        assert "whole numbers of directions >= 1" in capsys.readouterr().err
