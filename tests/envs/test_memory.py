"""Memory tasks: registered ids, the cue / answer rules, and that memoryless policies fail."""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import numpy as np
import pytest
import torch

from seqrl.core import PolicyStep
from seqrl.envs import CallablePolicy, check_env_id, evaluate, make_env


@pytest.mark.parametrize(
    "env_id",
    ["seqrl/TMaze-v0", "seqrl/TMazeLong-v0", "seqrl/RepeatPrevious-v0", "seqrl/MaskedCartPole-v1"],
)
def test_memory_ids_are_known_to_the_env_factory(env_id):
    check_env_id(env_id)
    env = make_env(env_id, seed=0)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    env.close()


def test_tmaze_shows_the_cue_only_at_the_start_and_rewards_the_matching_turn():
    env = make_env("seqrl/TMaze-v0", corridor_length=5)
    for seed in range(6):
        obs, _ = env.reset(seed=seed)
        cue = int(np.argmax(obs[:2]))
        assert obs[:2].sum() == 1 and obs[2] == 0
        for step in range(5):
            obs, reward, terminated, truncated, _ = env.step(1 - cue)  # ignored in the corridor
            assert obs[:2].sum() == 0 and reward == 0 and not terminated
            assert obs[2] == (1.0 if step == 4 else 0.0), "junction flag at the corridor's end"
        turn = seed % 2  # right half the time
        obs, reward, terminated, truncated, info = env.step(turn)
        assert terminated and not truncated
        assert reward == float(turn == cue) and info["success"] == (turn == cue)


def test_tmaze_memoryless_policies_succeed_half_the_time_and_memory_solves_it():
    always_up = CallablePolicy(lambda obs: np.zeros(len(obs), dtype=np.int64))
    result = evaluate(always_up, "seqrl/TMaze-v0", episodes=400, num_envs=20, seed=0)
    assert 0.4 < result.mean < 0.6
    assert (result.lengths == 21).all()

    class RememberCue:
        def reset(self, done=None):
            if done is None:
                self.cue = np.zeros(20, dtype=np.int64)

        def act(self, obs, reward=None):
            seen = obs[:, :2].sum(1) > 0
            self.cue = np.where(seen, obs[:, :2].argmax(1), self.cue)
            return PolicyStep(torch.as_tensor(self.cue))

    result = evaluate(RememberCue(), "seqrl/TMaze-v0", episodes=100, num_envs=20, seed=0)
    assert result.mean == 1.0


def test_repeat_previous_rewards_the_symbol_from_k_steps_ago():
    env = make_env("seqrl/RepeatPrevious-v0", k=2, num_symbols=3, length=10)
    obs, _ = env.reset(seed=0)
    history, total, steps = [int(obs.argmax())], 0.0, 0
    terminated = False
    while not terminated:
        answer = history[-3] if len(history) >= 3 else 0
        obs, reward, terminated, _, _ = env.step(answer)
        total, steps = total + reward, steps + 1
        history.append(int(obs.argmax()))
    assert steps == 10 and total == pytest.approx(1.0)
    # answering the current symbol (no memory) is right only by chance
    lazy = CallablePolicy(lambda obs: obs.argmax(1))
    result = evaluate(lazy, "seqrl/RepeatPrevious-v0", episodes=100, num_envs=10, seed=0)
    assert result.mean < 0.4


def test_masked_cartpole_is_cartpole_without_the_velocities():
    masked, full = make_env("seqrl/MaskedCartPole-v1"), gym.make("CartPole-v1")
    obs, _ = masked.reset(seed=4)
    full_obs, _ = full.reset(seed=4)
    np.testing.assert_array_equal(obs, full_obs[[0, 2]])
    for action in [0, 1, 1, 0, 1]:
        obs, reward, *_ = masked.step(action)
        full_obs, full_reward, *_ = full.step(action)
        np.testing.assert_array_equal(obs, full_obs[[0, 2]])
        assert reward == full_reward
    assert masked.observation_space.shape == (2,)
    assert masked.spec.max_episode_steps == 500


def test_tmaze_rejects_a_bad_corridor_length():
    with pytest.raises(ValueError, match="corridor_length"):
        make_env("seqrl/TMaze-v0", corridor_length=0)


@pytest.mark.skipif(importlib.util.find_spec("minigrid") is not None, reason="minigrid installed")
def test_minigrid_ids_name_the_missing_package():
    with pytest.raises(ImportError, match="pip install"):
        make_env("seqrl/MiniGrid-MemoryS7-v0")


@pytest.mark.skipif(importlib.util.find_spec("minigrid") is None, reason="needs minigrid")
def test_minigrid_memory_gives_image_observations():
    env = make_env("seqrl/MiniGrid-MemoryS7-v0", seed=0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (7, 7, 3) and obs.dtype == np.uint8
    assert env.action_space.n == 7
