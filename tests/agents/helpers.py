"""Synthetic data for agent tests: random window batches and observation streams."""

from __future__ import annotations

import numpy as np
import torch

from seqrl.core import EnvSpec, WindowBatch

CONTINUOUS = EnvSpec(obs_shape=(5,), action_dim=2, action_low=(-2.0, -1.0), action_high=(2.0, 1.0))
DISCRETE = EnvSpec(obs_shape=(4,), action_dim=3, discrete=True)


def random_window_batch(
    spec: EnvSpec, batch: int = 4, context: int = 6, seed: int = 0
) -> WindowBatch:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn((batch, context, *spec.obs_shape), generator=gen)
    if spec.discrete:
        actions = torch.randint(0, spec.action_dim, (batch, context), generator=gen)
    else:
        actions = torch.rand((batch, context, spec.action_dim), generator=gen) * 2 - 1
        actions = actions * torch.tensor(spec.action_high)
    mask = torch.ones(batch, context, dtype=torch.bool)
    mask[0, : context // 2] = False  # one left-padded window
    return WindowBatch(
        observations=obs,
        actions=actions,
        rewards=torch.randn(batch, context, generator=gen),
        returns_to_go=torch.randn(batch, context, generator=gen),
        timesteps=torch.arange(context).repeat(batch, 1),
        mask=mask,
    )


def observation_stream(spec: EnvSpec, steps: int, num_envs: int, seed: int = 0):
    """(steps, N, *obs) observations and (steps, N) rewards."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(steps, num_envs, *spec.obs_shape)).astype(np.float32)
    rewards = rng.normal(size=(steps, num_envs)).astype(np.float32)
    return obs, rewards
