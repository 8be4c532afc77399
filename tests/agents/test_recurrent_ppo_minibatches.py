"""Recurrent PPO splits each epoch's chunks into exactly `minibatches` minibatches.

`tensor.chunk(k)` returns fewer than k pieces when k does not divide the count nicely (6 chunks,
k = 4: three pieces of 2), which silently lowered the number of PPO steps per epoch.
"""

from __future__ import annotations

import pytest
import torch

from seqrl.agents.examples import example_rollout
from seqrl.agents.recurrent_ppo import RecurrentPPO, RecurrentPPOConfig
from tests.buffers.test_rollout import DISCRETE


@pytest.mark.parametrize("minibatches", [1, 4, 5, 100])
def test_each_epoch_runs_exactly_min_minibatches_chunks_steps_covering_every_chunk(minibatches):
    torch.manual_seed(0)
    config = RecurrentPPOConfig(
        backbone="gru", width=8, layers=1, chunk_len=4, epochs=2, minibatches=minibatches
    )
    agent = RecurrentPPO(config, DISCRETE)
    rollout = example_rollout(agent, num_envs=3, steps=8, chunk_len=4, end_probability=0.0)
    assert rollout.num_chunks == 6  # 3 envs x 8 steps in chunks of 4: 6 is not divisible by 4
    seen: list[int] = []
    original = agent.loss

    def spy(batch, memory):
        seen.append(batch["mask"].shape[0])
        return original(batch, memory)

    agent.loss = spy  # type: ignore[method-assign]
    agent.update(rollout)
    expected = min(minibatches, rollout.num_chunks)
    assert len(seen) == config.epochs * expected
    for epoch in range(config.epochs):
        sizes = seen[epoch * expected : (epoch + 1) * expected]
        assert sum(sizes) == rollout.num_chunks and max(sizes) - min(sizes) <= 1
