from __future__ import annotations

import numpy as np
import pytest
from gymnasium.vector import AsyncVectorEnv

from seqrl.envs import final_observations, make_env, make_vector_env


def test_unknown_env_id_names_close_matches():
    with pytest.raises(ValueError, match="Did you mean Hopper-v5"):
        make_env("Hoper-v5")


def test_vector_env_keeps_truncated_final_observation():
    envs = make_vector_env("Pendulum-v1", num_envs=2, max_episode_steps=5)
    obs, _ = envs.reset(seed=[0, 1])
    for step in range(5):
        action = np.zeros((2, 1), dtype=np.float32)
        next_obs, _, terminated, truncated, infos = envs.step(action)
        done = terminated | truncated
        if step < 4:
            assert not done.any()
            np.testing.assert_array_equal(final_observations(next_obs, infos, done), next_obs)
        else:
            assert truncated.all() and not terminated.any()
            final = final_observations(next_obs, infos, done)
            # the returned obs already belongs to the next episode; the final one continues this
            # episode's dynamics smoothly from the previous observation
            assert not np.allclose(final, next_obs)
            assert np.abs(final - obs).max() < np.abs(next_obs - obs).max()
        obs = next_obs
    envs.close()


def test_vector_env_marks_termination_separately_from_truncation():
    envs = make_vector_env("CartPole-v1", num_envs=2, max_episode_steps=500)
    envs.reset(seed=[3, 4])
    ended = np.zeros(2, dtype=bool)
    saw_terminated = False
    for _ in range(200):
        _, _, terminated, truncated, infos = envs.step(np.ones(2, dtype=np.int64))
        assert not truncated.any()  # 500-step limit is never reached pushing right
        if terminated.any():
            saw_terminated = True
            assert "final_obs" in infos
            ended |= terminated
    assert saw_terminated and ended.all()
    envs.close()


def test_final_observations_requires_same_step_autoreset():
    with pytest.raises(RuntimeError, match="same-step autoreset"):
        final_observations(np.zeros((2, 3)), {}, np.array([True, False]))


def test_async_vector_env_gives_the_same_final_observations_as_sync():
    results = []
    for asynchronous in (False, True):
        envs = make_vector_env("Pendulum-v1", 3, asynchronous=asynchronous, max_episode_steps=4)
        assert isinstance(envs, AsyncVectorEnv) == asynchronous
        obs, _ = envs.reset(seed=[5, 6, 7])
        steps = []
        for _ in range(6):  # an episode end at step 4, then two steps of the next episodes
            action = np.full((3, 1), 0.5, dtype=np.float32)
            obs, _, _, truncated, infos = envs.step(action)
            steps.append((obs, truncated, final_observations(obs, infos, truncated)))
        envs.close()
        results.append(steps)
    assert results[0][3][1].all()  # every env truncated at step 4
    assert not np.allclose(results[0][3][2], results[0][3][0])  # final obs != next first obs
    for (obs, truncated, final), (obs_a, truncated_a, final_a) in zip(*results, strict=True):
        np.testing.assert_array_equal(truncated_a, truncated)
        np.testing.assert_array_equal(obs_a, obs)
        np.testing.assert_array_equal(final_a, final)
