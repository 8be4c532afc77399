from __future__ import annotations

import numpy as np
import pytest

from seqrl.core import PolicyStep
from seqrl.envs import CallablePolicy, RandomPolicy, d4rl_reference_scores, evaluate, make_env


def _linear_policy(obs_dim: int, act_dim: int, seed: int = 0):
    weights = np.random.default_rng(seed).normal(size=(obs_dim, act_dim)) * 0.5

    def act(obs: np.ndarray) -> np.ndarray:
        return np.tanh(obs @ weights).astype(np.float32)  # (B, A)

    return act


def _run_one_by_one(env_id, act_fn, seeds, **env_kwargs):
    returns, lengths = [], []
    for seed in seeds:
        env = make_env(env_id, **env_kwargs)
        obs, _ = env.reset(seed=seed)
        total, steps, done = 0.0, 0, False
        while not done:
            action = np.asarray(act_fn(obs[None]))[0]
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            steps += 1
            done = terminated or truncated
        env.close()
        returns.append(total)
        lengths.append(steps)
    return np.array(returns), np.array(lengths)


def test_evaluate_parallel_matches_one_by_one_episodes():
    act_fn = _linear_policy(11, 3)
    result = evaluate(CallablePolicy(act_fn), "Hopper-v5", episodes=12, num_envs=8, seed=100)
    returns, lengths = _run_one_by_one("Hopper-v5", act_fn, range(100, 112))
    assert len(set(lengths)) > 1, "episodes of different lengths are needed to test slot reuse"
    np.testing.assert_array_equal(result.lengths, lengths)
    np.testing.assert_allclose(result.returns, returns, rtol=0, atol=1e-9)
    assert result.seeds == list(range(100, 112))


class StepCounterPolicy:
    """Action depends on steps since the env's last reset: wrong partial resets change episodes."""

    def __init__(self, num_envs: int) -> None:
        self.steps = np.zeros(num_envs, dtype=np.int64)
        self.reset_calls: list[np.ndarray | None] = []

    def reset(self, done=None) -> None:
        self.reset_calls.append(None if done is None else np.asarray(done).copy())
        if done is None:
            self.steps[:] = 0
        else:
            self.steps[np.asarray(done)] = 0

    def act(self, obs, reward=None) -> PolicyStep:
        import torch

        action = (self.steps // 3) % 2  # (B,) left-left-left-right-right-right...
        self.steps += 1
        return PolicyStep(action=torch.as_tensor(action))


def test_evaluate_resets_only_finished_envs():
    policy = StepCounterPolicy(4)
    result = evaluate(policy, "CartPole-v1", episodes=9, num_envs=4, seed=7)
    reference = StepCounterPolicy(1)

    def act_fn(obs):
        return reference.act(obs).action.numpy()

    expected_returns, expected_lengths = [], []
    for seed in range(7, 16):
        reference.reset(None)
        r, n = _run_one_by_one("CartPole-v1", act_fn, [seed])
        expected_returns.append(r[0])
        expected_lengths.append(n[0])
    np.testing.assert_array_equal(result.lengths, expected_lengths)
    partial = [d for d in policy.reset_calls[1:] if d is not None]
    assert partial and all(0 < d.sum() < 4 for d in partial[:3]), "resets must be per env"


def test_evaluate_counts_truncated_episodes_at_the_time_limit():
    env = make_env("Pendulum-v1")
    policy = RandomPolicy(env.action_space, num_envs=3, seed=0)
    result = evaluate(
        policy, "Pendulum-v1", episodes=5, num_envs=3, seed=0, env_kwargs={"max_episode_steps": 17}
    )
    np.testing.assert_array_equal(result.lengths, [17] * 5)  # never terminates, always truncated
    assert result.reference is None and result.normalized_mean is None
    assert np.all(result.returns < 0)


def test_evaluate_rejects_zero_episodes():
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        evaluate(CallablePolicy(lambda o: o), "CartPole-v1", episodes=0)


def test_eval_result_normalizes_with_the_reference_it_is_given_and_only_then():
    act_fn = _linear_policy(11, 3, seed=1)
    plain = evaluate(CallablePolicy(act_fn), "Hopper-v5", episodes=2, num_envs=2, seed=0)
    assert "eval/normalized_score" not in plain.metrics()
    assert "normalized score" not in plain.table()
    reference = d4rl_reference_scores("Hopper-v5", any_version=True)
    result = evaluate(
        CallablePolicy(act_fn), "Hopper-v5", episodes=2, num_envs=2, seed=0, reference=reference
    )
    metrics = result.metrics()
    expected = 100 * (result.mean + 20.272305) / (3234.3 + 20.272305)
    assert metrics["eval/normalized_score"] == pytest.approx(expected)
    assert "normalized score" in result.table()


def test_evaluate_in_subprocesses_plays_the_same_episodes_as_in_process():
    act_fn = _linear_policy(11, 3, seed=1)
    runs = []
    for asynchronous in (False, True):
        policy = CallablePolicy(act_fn)
        runs.append(evaluate(policy, "Hopper-v5", 7, 3, seed=40, asynchronous=asynchronous))
    assert len(set(runs[0].lengths)) > 1, "slots must be reused (reset_mask in subprocesses)"
    np.testing.assert_array_equal(runs[1].lengths, runs[0].lengths)
    np.testing.assert_array_equal(runs[1].returns, runs[0].returns)
