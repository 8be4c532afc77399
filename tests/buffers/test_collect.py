"""Dataset collection: random and SB3 policies, Minari and D4RL outputs, unbiased episodes."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from seqrl.buffers import load_d4rl_hdf5, load_minari
from seqrl.collect import collect, find_obs_stats, record_episodes
from seqrl.envs import RandomPolicy
from tests.buffers.helpers import assert_same_arrays


class VariableLengthEnv(gym.Env):
    """Episodes last 2 or 30 steps (drawn at reset); observation (t, length, episode uid)."""

    observation_space = gym.spaces.Box(0, 2**20, shape=(3,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        self.t, self.length = 0, int(self.np_random.choice([2, 30]))
        self.uid = int(self.np_random.integers(2**20))
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.length, self.uid], dtype=np.float32)

    def step(self, action: int):  # type: ignore[override]
        self.t += 1
        return self._obs(), 1.0, self.t >= self.length, False, {}


gym.register("seqrl-test/VariableLength-v0", entry_point=VariableLengthEnv)


def test_collect_random_policy_into_minari(minari_root: Path) -> None:
    result = collect("CartPole-v1", "random", 7, "test/cartpole/random-v0", num_envs=3, seed=0,
                     progress=False)  # fmt: skip
    assert result.path == minari_root / "test/cartpole/random-v0"
    store = load_minari("test/cartpole/random-v0")
    assert_same_arrays(result.store, store)
    assert store.num_episodes == 7 and store.metadata.env_id == "CartPole-v1"
    ends = store.episode_offsets[1:] - 1
    assert np.all(store.terminations[ends] | store.truncations[ends])  # every episode complete
    assert store.observation_shape == (4,) and store.discrete_actions
    again = collect("CartPole-v1", "random", 7, "test/cartpole/random-v1", num_envs=3, seed=0,
                    progress=False)  # fmt: skip
    assert_same_arrays(result.store, again.store)  # same seed, same data
    assert f"wrote 7 episodes ({store.num_steps} steps) of random" in result.describe()


def test_collect_random_policy_into_d4rl_hdf5(tmp_path: Path, minari_root: Path) -> None:
    out = tmp_path / "pendulum.hdf5"
    result = collect("Pendulum-v1", "random", 3, out, num_envs=2, seed=1, progress=False)
    store = load_d4rl_hdf5(out)
    assert_same_arrays(result.store, store)
    assert store.episode_lengths.tolist() == [200, 200, 200]  # Pendulum's time limit
    assert store.truncations.sum() == 3 and not store.terminations.any()
    assert store.metadata.env_id == "Pendulum-v1"
    assert list(minari_root.iterdir()) == []  # nothing went to the Minari root


def test_collect_keeps_the_first_started_episodes() -> None:
    """Exactly the first N episodes to *start* are kept (in start order), not the first N to
    finish, which would favour the 2-step episodes over the 30-step ones."""
    env_id, num_envs, seed, count = "seqrl-test/VariableLength-v0", 4, 0, 8
    # Replay every env's own sequence of episodes: env i is seeded with seed + i, then resets
    # without a seed, exactly as the vector env autoresets it.
    started = []  # (start step, env index, uid, length)
    for i in range(num_envs):
        env, start = VariableLengthEnv(), 0
        env.reset(seed=seed + i)
        for _ in range(count):
            started.append((start, i, env.uid, env.length))
            start += env.length
            env.reset()
    first_started = [uid for _, _, uid, _ in sorted(started)[:count]]
    first_finished = [uid for *_, uid, _ in sorted(started, key=lambda s: (s[0] + s[3], s[1]))]
    assert set(first_started) != set(first_finished[:count])  # the two rules differ here

    policy = RandomPolicy(gym.spaces.Discrete(2), num_envs, 0)
    episodes = record_episodes(env_id, policy, count, num_envs, seed, progress=False)
    assert [int(ep["observations"][0, 2]) for ep in episodes] == first_started
    for ep in episodes:  # complete: t runs 0..length-1, the final observation reaches length
        length = len(ep["rewards"])
        assert ep["observations"][:, 0].tolist() == list(range(length))
        assert ep["final_observation"][0] == length and ep["terminations"][-1]


def test_collect_refuses_an_existing_output_before_running(minari_root: Path) -> None:
    collect("CartPole-v1", "random", 1, "test/cartpole/once-v0", num_envs=1, progress=False)
    with pytest.raises(FileExistsError, match=r"already exists"):
        collect("CartPole-v1", "random", 1, "test/cartpole/once-v0", progress=False)
    with pytest.raises(ValueError, match=r"not a valid Minari dataset id"):
        collect("CartPole-v1", "random", 1, "no-version", progress=False)
    with pytest.raises(ValueError, match=r"--policy"):
        collect("CartPole-v1", "nothing.pt", 1, "test/cartpole/x-v0", progress=False)


def test_collect_with_a_trained_sb3_zip_applies_vecnormalize(
    tmp_path: Path, minari_root: Path
) -> None:
    from stable_baselines3 import PPO

    sb3_kwargs = {"n_steps": 64, "batch_size": 32, "n_epochs": 1}
    trained = collect("CartPole-v1", None, 1, "test/cartpole/ppo-v0", train_sb3_algo="ppo",
                      train_steps=128, sb3_dir=tmp_path / "sb3", sb3_kwargs=sb3_kwargs,
                      progress=False)  # fmt: skip
    checkpoint = trained.sb3_checkpoint
    assert checkpoint is not None and checkpoint.is_file()
    stats_path = find_obs_stats(checkpoint)
    assert stats_path == checkpoint.with_name(f"{checkpoint.stem}-obsrms.npz")

    # Exaggerate the saved statistics so that normalized and raw observations act differently.
    mean, var = np.array([1.0, -1.0, 0.2, -0.2]), np.full(4, 1e-3)
    np.savez(stats_path, mean=mean, var=var, clip_obs=10.0, epsilon=1e-8)

    result = collect("CartPole-v1", str(checkpoint), 3, "test/cartpole/ppo-v1", num_envs=2,
                     seed=4, progress=False)  # fmt: skip
    store = result.store
    model = PPO.load(checkpoint, device="cpu")
    normalized = np.clip(
        (store.observations - mean) / np.sqrt(var + 1e-8), -10.0, 10.0,
    )  # fmt: skip
    expected, _ = model.predict(normalized.astype(np.float32), deterministic=True)
    raw, _ = model.predict(store.observations, deterministic=True)
    assert np.array_equal(store.actions, expected)
    assert not np.array_equal(store.actions, raw)  # the statistics really were applied
