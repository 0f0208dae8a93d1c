"""Deterministic seed derivation.

Every random draw of a run is a pure function of (seed, step, purpose), so a run can be resumed
at any step and give the same result as an uninterrupted one, without saving generator state.
"""

from __future__ import annotations

import torch

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed that depends on ``seed`` and every key, in order."""
    x = _splitmix64(seed & _MASK)
    for k in keys:
        x = _splitmix64(x ^ (k & _MASK))
    return x & ((1 << 63) - 1)


def generator(seed: int) -> torch.Generator:
    """A CPU generator: draws on the CPU are the same on every machine and device."""
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g
