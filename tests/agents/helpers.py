"""Synthetic data for agent tests: random window batches and observation streams."""

from __future__ import annotations

import dataclasses

import numpy as np

from seqrl.agents import REGISTRY
from seqrl.agents.examples import example_window_batch as random_window_batch
from seqrl.core import EnvSpec

__all__ = [
    "CONTINUOUS",
    "DISCRETE",
    "exact_settings",
    "observation_stream",
    "random_window_batch",
]

CONTINUOUS = EnvSpec(obs_shape=(5,), action_dim=2, action_low=(-2.0, -1.0), action_high=(2.0, 1.0))
DISCRETE = EnvSpec(obs_shape=(4,), action_dim=3, discrete=True)


def observation_stream(spec: EnvSpec, steps: int, num_envs: int, seed: int = 0):
    """(steps, N, *obs) observations and (steps, N) rewards."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(steps, num_envs, *spec.obs_shape)).astype(np.float32)
    rewards = rng.normal(size=(steps, num_envs)).astype(np.float32)
    return obs, rewards


def exact_settings(name: str) -> dict:
    """Settings that make a registered agent's update reproducible across code paths (compiled
    or eager, split or concatenated batch): no dropout (its masks differ between them) and fp32
    (bf16 matmuls round differently), where the agent's config has these fields."""
    names = {f.name for f in dataclasses.fields(REGISTRY[name].config_cls)}
    return {k: v for k, v in {"dropout": 0.0, "precision": "fp32"}.items() if k in names}
