"""The rollout buffer: GAE against a plain-Python reference, the chunk layout, stored memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrl.agents.examples import example_rollout as collect_synthetic_rollout
from seqrl.agents.recurrent_ppo import RecurrentPPO, RecurrentPPOConfig
from seqrl.buffers.rollout import MEMORY_PREFIX, RolloutBuffer, compute_gae
from seqrl.core import EnvSpec, PolicyStep

DISCRETE = EnvSpec(obs_shape=(3,), action_dim=2, discrete=True)
CONTINUOUS = EnvSpec(obs_shape=(4,), action_dim=2, action_low=(-1.0, -2.0), action_high=(1.0, 2.0))


def python_gae(rewards, values, terminated, truncated, bootstrap, gamma, lam):
    """Reference: per env, per episode segment, A_t = sum_l (gamma lam)^l delta_{t+l}."""
    steps, num_envs = rewards.shape
    advantages = np.zeros((steps, num_envs))
    for env in range(num_envs):
        start = 0
        while start < steps:
            end = start  # last step of this segment
            while end < steps - 1 and not (terminated[end, env] or truncated[end, env]):
                end += 1
            deltas = []
            for t in range(start, end + 1):
                if t < end:
                    next_value = values[t + 1, env]
                elif terminated[t, env]:
                    next_value = 0.0
                else:  # truncated, or the rollout ends mid-episode
                    next_value = bootstrap[t, env]
                deltas.append(rewards[t, env] + gamma * next_value - values[t, env])
            for t in range(start, end + 1):
                advantages[t, env] = sum(
                    (gamma * lam) ** (k - t) * deltas[k - start] for k in range(t, end + 1)
                )
            start = end + 1
    return advantages, advantages + values


@pytest.mark.parametrize("seed", range(5))
def test_gae_matches_python_reference_with_truncation_and_termination_mixed(seed):
    rng = np.random.default_rng(seed)
    steps, num_envs = 23, 4
    rewards = rng.normal(size=(steps, num_envs)).astype(np.float32)
    values = rng.normal(size=(steps, num_envs)).astype(np.float32)
    terminated = rng.random((steps, num_envs)) < 0.15
    truncated = (rng.random((steps, num_envs)) < 0.15) & ~terminated
    terminated[-1, 0], truncated[-1, 1] = True, True  # both kinds at the rollout's end too
    bootstrap = rng.normal(size=(steps, num_envs)).astype(np.float32)
    assert terminated.any() and truncated.any()
    got_adv, got_ret = compute_gae(rewards, values, terminated, truncated, bootstrap, 0.97, 0.9)
    ref_adv, ref_ret = python_gae(rewards, values, terminated, truncated, bootstrap, 0.97, 0.9)
    np.testing.assert_allclose(got_adv, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_ret, ref_ret, rtol=1e-5, atol=1e-5)


def test_gae_ignores_bootstrap_values_after_termination():
    rewards = np.ones((3, 1), np.float32)
    values = np.zeros((3, 1), np.float32)
    terminated = np.array([[False], [False], [True]])
    truncated = np.zeros((3, 1), bool)
    bootstrap = np.full((3, 1), 100.0, np.float32)
    advantages, _ = compute_gae(rewards, values, terminated, truncated, bootstrap, 1.0, 1.0)
    np.testing.assert_allclose(advantages[:, 0], [3.0, 2.0, 1.0])
    truncated, terminated = terminated, truncated
    advantages, _ = compute_gae(rewards, values, terminated, truncated, bootstrap, 1.0, 1.0)
    np.testing.assert_allclose(advantages[:, 0], [103.0, 102.0, 101.0])


def _tiny_agent(backbone: str, spec: EnvSpec = DISCRETE) -> RecurrentPPO:
    torch.manual_seed(0)
    config = RecurrentPPOConfig(backbone=backbone, width=16, layers=2, memory=6, chunk_len=4)
    return RecurrentPPO(config, spec)


def test_chunks_cover_every_step_once_end_at_episode_ends_and_respect_chunk_len():
    rollout = collect_synthetic_rollout(_tiny_agent("mlp"), num_envs=4, steps=30, chunk_len=5)
    index = rollout.chunk_index[rollout.chunk_mask]
    assert sorted(index.tolist()) == list(range(30 * 4))
    assert (rollout.chunk_length <= 5).all() and (rollout.chunk_length >= 1).all()
    start = rollout.episode_start.reshape(-1)
    for c in range(rollout.num_chunks):
        steps = rollout.chunk_index[c, : rollout.chunk_length[c]]
        assert (rollout.chunk_index[c, rollout.chunk_length[c] :] == -1).all()
        assert (steps.diff() == rollout.num_envs).all(), "one env, consecutive steps"
        assert not start[steps[1:]].any(), "an episode start only at a chunk's first step"
    # every episode start begins a chunk
    firsts = rollout.chunk_first * rollout.num_envs + rollout.chunk_env
    assert set(torch.nonzero(start).squeeze(-1).tolist()) <= set(firsts.tolist())


@pytest.mark.parametrize("backbone", ["gtrxl", "lstm", "gru", "xlstm", "mlp"])
def test_chunk_replayed_from_stored_memory_reproduces_collected_log_probs(backbone):
    agent = _tiny_agent(backbone)
    rollout = collect_synthetic_rollout(agent, num_envs=3, steps=14, chunk_len=4, seed=1)
    assert rollout.num_chunks > rollout.num_envs * 14 // 4, "episode ends cut extra chunks"
    model = agent.model.eval()
    with torch.no_grad():
        head, value = model(rollout.chunked(rollout.observations), rollout.chunk_memory())
        log_prob = model.log_prob(model.distribution(head), rollout.chunked(rollout.actions))
    mask = rollout.chunk_mask
    torch.testing.assert_close(log_prob[mask], rollout.chunked(rollout.info["log_prob"])[mask])
    torch.testing.assert_close(value[mask], rollout.chunked(rollout.info["value"])[mask])


def test_replay_from_fresh_memory_instead_of_stored_memory_differs():
    """The stored memory matters: replaying mid-episode chunks from an empty state is wrong."""
    agent = _tiny_agent("lstm")
    rollout = collect_synthetic_rollout(agent, steps=14, chunk_len=4, end_probability=0.0)
    fresh = {k: torch.zeros_like(v) for k, v in rollout.chunk_memory().items()}
    with torch.no_grad():
        _, value = agent.model.eval()(rollout.chunked(rollout.observations), fresh)
    later = rollout.chunk_first > 0
    stored = rollout.chunked(rollout.info["value"])
    assert not torch.allclose(value[later], stored[later])


def test_memory_is_stored_only_at_chunk_starts_and_info_is_stored_per_step():
    agent = _tiny_agent("gru")
    record: list = []
    rollout = collect_synthetic_rollout(agent, num_envs=2, steps=9, chunk_len=3, record=record)
    assert set(rollout.memory) == {"h"}
    assert rollout.memory["h"].shape[0] == rollout.num_chunks
    assert set(rollout.info) == {"log_prob", "value"}
    for c in range(rollout.num_chunks):
        t, env = int(rollout.chunk_first[c]), int(rollout.chunk_env[c])
        _, step, _, _, _ = record[t]
        torch.testing.assert_close(rollout.memory["h"][c], step.info[MEMORY_PREFIX + "h"][env])


def test_bootstrap_observation_is_final_obs_after_truncation_next_obs_at_end_none_if_terminated():
    agent = _tiny_agent("mlp")
    record: list = []
    rollout = collect_synthetic_rollout(agent, num_envs=4, steps=20, chunk_len=6, record=record)
    last = rollout.chunk_first + rollout.chunk_length - 1
    for c in range(rollout.num_chunks):
        t, env = int(last[c]), int(rollout.chunk_env[c])
        if rollout.truncated[t, env]:
            assert rollout.bootstrap_mask[c]
            torch.testing.assert_close(
                rollout.bootstrap_observations[c], torch.as_tensor(record[t][2][env])
            )
        elif rollout.terminated[t, env]:
            assert not rollout.bootstrap_mask[c]
        elif t == rollout.num_steps - 1:
            assert rollout.bootstrap_mask[c], "a running episode at the rollout's end bootstraps"
        else:
            assert not rollout.bootstrap_mask[c], "a chunk cut at chunk_len continues, no bootstrap"
    assert rollout.truncated.any() and rollout.terminated.any()


def test_buffer_rejects_misuse_with_clear_errors():
    buffer = RolloutBuffer(num_envs=2, steps=1, chunk_len=1)
    step = PolicyStep(action=torch.zeros(2, dtype=torch.long), info={})
    obs = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="final_obs"):
        buffer.add(obs, step, np.zeros(2), np.zeros(2, bool), np.array([True, False]))
    buffer = RolloutBuffer(num_envs=2, steps=1, chunk_len=1)
    with pytest.raises(RuntimeError, match="finish"):
        buffer.finish(obs)
    buffer.add(obs, step, np.zeros(2), np.zeros(2, bool), np.zeros(2, bool))
    with pytest.raises(RuntimeError, match="full"):
        buffer.add(obs, step, np.zeros(2), np.zeros(2, bool), np.zeros(2, bool))
    with pytest.raises(ValueError, match="chunk_len"):
        RolloutBuffer(num_envs=2, steps=4, chunk_len=0)
