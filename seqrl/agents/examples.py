"""Small synthetic inputs for the conformance tests and agents' registry entries.

`AgentEntry.example_batch` returns one of these, so the conformance battery in
`tests/agents/test_conformance.py` can update every registered agent without knowing it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from seqrl.core import DataStats, EnvSpec, WindowBatch


def example_window_batch(
    spec: EnvSpec, batch: int = 4, context: int = 6, seed: int = 0
) -> WindowBatch:
    """Random windows (B, K) with env-unit actions inside the action box and one left-padded
    row, as `WindowSampler` returns them."""
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn((batch, context, *spec.obs_shape), generator=gen)
    if spec.discrete:
        actions = torch.randint(0, spec.action_dim, (batch, context), generator=gen)
    else:
        unit = torch.rand((batch, context, spec.action_dim), generator=gen) * 2 - 1
        low = torch.tensor(spec.action_low or [-1.0] * spec.action_dim)
        high = torch.tensor(spec.action_high or [1.0] * spec.action_dim)
        actions = (high + low) / 2 + unit * (high - low) / 2  # (B, K, A)
    mask = torch.ones(batch, context, dtype=torch.bool)
    mask[0, : context // 2] = False  # one left-padded window
    timesteps = torch.arange(context).repeat(batch, 1)
    timesteps[0] = (timesteps[0] - context // 2).clamp(min=0)
    return WindowBatch(
        observations=obs,
        actions=actions,
        rewards=torch.randn(batch, context, generator=gen),
        returns_to_go=torch.randn(batch, context, generator=gen),
        timesteps=timesteps,
        mask=mask,
    )


def example_stats(spec: EnvSpec, seed: int = 0) -> DataStats:
    """Dataset statistics of the kind `EpisodeStore.stats()` returns, for a random dataset."""
    rng = np.random.default_rng(seed)
    obs_dim = int(np.prod(spec.obs_shape)) if spec.obs_shape else 1
    mean = rng.normal(size=obs_dim)
    std = rng.uniform(0.5, 2.0, size=obs_dim)
    continuous = not spec.discrete
    return DataStats(
        observation_mean=mean,
        observation_std=std,
        observation_min=mean - 3 * std,
        observation_max=mean + 3 * std,
        action_min=np.array(spec.action_low) if continuous and spec.action_low else None,
        action_max=np.array(spec.action_high) if continuous and spec.action_high else None,
        reward_min=-1.0,
        reward_max=2.0,
        return_min=-10.0,
        return_max=200.0,
    )


def example_rollout(
    agent: Any,
    num_envs: int = 3,
    steps: int = 12,
    chunk_len: int = 4,
    seed: int = 0,
    end_probability: float = 0.12,
    record: list | None = None,
) -> Any:
    """A `Rollout` of `agent`'s exploring policy on random observations with random terminations
    and truncations (final observations random too). `record`, if given, receives per step
    (obs, PolicyStep, final_obs, truncated, policy.state) for tests that need what it saw."""
    from seqrl.buffers.rollout import RolloutBuffer

    spec = agent.spec
    rng = np.random.default_rng(seed)
    policy = agent.policy(num_envs=num_envs, explore=True)
    buffer = RolloutBuffer(num_envs, steps, chunk_len)
    obs = rng.normal(size=(num_envs, *spec.obs_shape)).astype(np.float32)
    for _ in range(steps):
        step = policy.act(obs)
        terminated = rng.random(num_envs) < end_probability
        truncated = (rng.random(num_envs) < end_probability) & ~terminated
        final = rng.normal(size=obs.shape).astype(np.float32)
        if record is not None:
            record.append((obs, step, final, truncated, getattr(policy, "state", None)))
        buffer.add(obs, step, rng.normal(size=num_envs), terminated, truncated, final)
        policy.reset(terminated | truncated)
        obs = rng.normal(size=obs.shape).astype(np.float32)
    return buffer.finish(obs)
