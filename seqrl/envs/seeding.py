"""The one seeding function: Python, NumPy and torch RNGs from one integer."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> np.random.Generator:
    """Seed `random`, NumPy's legacy RNG and torch; return a fresh NumPy Generator for `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # third-party code uses the legacy RNG
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def episode_seeds(seed: int | None, count: int) -> list[int | None]:
    """Seeds for `count` episodes: `seed, seed + 1, ...`, or all None when `seed` is None."""
    if seed is None:
        return [None] * count
    return [seed + i for i in range(count)]
