"""EpisodeStore: layout, statistics, views, and the rejection of bad data."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from seqrl.buffers import EpisodeStore, StoreMetadata
from seqrl.buffers.episode_store import OBS_STD_FLOOR
from seqrl.core import DataStats
from tests.buffers.helpers import random_episodes, random_store


def test_store_offsets_and_views_match_the_episodes() -> None:
    rng = np.random.default_rng(0)
    episodes = random_episodes(rng, [3, 1, 5])
    store = EpisodeStore.from_episodes(episodes)
    assert store.num_episodes == 3 and store.num_steps == 9
    assert store.episode_offsets.tolist() == [0, 3, 4, 9]
    assert store.episode_lengths.tolist() == [3, 1, 5]
    assert store.episode_index.tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2]
    assert store.timesteps.tolist() == [0, 1, 2, 0, 0, 1, 2, 3, 4]
    for e, source in enumerate(episodes):
        view = store.episode(e)
        assert np.array_equal(view.observations, source["observations"][:-1])
        assert np.array_equal(view.final_observation, source["observations"][-1])
        assert np.array_equal(view.actions, source["actions"])
        assert np.array_equal(view.terminations, source["terminations"])
        assert view.episode_return == pytest.approx(source["rewards"].sum())
    np.testing.assert_allclose(store.episode_returns, [ep["rewards"].sum() for ep in episodes])
    assert np.array_equal(store.episode(-1).rewards, episodes[-1]["rewards"])


def test_store_accepts_t_observations_plus_final_observation() -> None:
    rng = np.random.default_rng(1)
    minari_style = random_episodes(rng, [4, 2])
    d4rl_style = [
        {**ep, "observations": ep["observations"][:-1], "final_observation": ep["observations"][-1]}
        for ep in minari_style
    ]
    a, b = EpisodeStore.from_episodes(minari_style), EpisodeStore.from_episodes(d4rl_style)
    assert np.array_equal(a.observations, b.observations)
    assert np.array_equal(a.final_observations, b.final_observations)


def test_next_observations_end_each_episode_with_its_final_observation() -> None:
    store = random_store(seed=2)
    nxt = store.next_observations()
    for e in range(store.num_episodes):
        lo, hi = store.episode_offsets[e], store.episode_offsets[e + 1]
        assert np.array_equal(nxt[lo : hi - 1], store.observations[lo + 1 : hi])
        assert np.array_equal(nxt[hi - 1], store.final_observations[e])


def test_observation_statistics_floor_constant_dimensions() -> None:
    rng = np.random.default_rng(3)
    episodes = random_episodes(rng, [5, 7])
    for ep in episodes:
        ep["observations"][:, 1] = 4.0  # a constant dimension
    store = EpisodeStore.from_episodes(episodes)
    obs = store.observations.astype(np.float64)
    np.testing.assert_allclose(store.observation_mean, obs.mean(0), rtol=1e-6)
    assert store.observation_std[1] == pytest.approx(OBS_STD_FLOOR)
    np.testing.assert_allclose(store.observation_std[[0, 2]], obs.std(0)[[0, 2]], rtol=1e-6)


@pytest.mark.parametrize("field", ["observations", "actions", "rewards"])
def test_store_rejects_nan_naming_field_and_episode(field: str) -> None:
    episodes = random_episodes(np.random.default_rng(4), [3, 4, 2])
    episodes[1][field][2] = np.nan
    with pytest.raises(ValueError, match=rf"my-data: field '{field}', episode 1: non-finite"):
        EpisodeStore.from_episodes(episodes, StoreMetadata(source="my-data"))


def test_store_rejects_inf_in_final_observation() -> None:
    episodes = random_episodes(np.random.default_rng(5), [3, 4])
    episodes[1]["observations"][-1, 0] = np.inf
    with pytest.raises(ValueError, match=r"final_observations.*non-finite"):
        EpisodeStore.from_episodes(episodes)


def test_store_rejects_ragged_episode() -> None:
    episodes = random_episodes(np.random.default_rng(6), [3, 4])
    episodes[1]["actions"] = episodes[1]["actions"][:-1]
    with pytest.raises(ValueError, match=r"field 'actions', episode 1: ragged episode.*Fix"):
        EpisodeStore.from_episodes(episodes)


def test_store_rejects_missing_key() -> None:
    episodes = random_episodes(np.random.default_rng(7), [3])
    del episodes[0]["truncations"]
    with pytest.raises(ValueError, match=r"field 'truncations', episode 0: missing key"):
        EpisodeStore.from_episodes(episodes)


def test_store_rejects_empty_dataset() -> None:
    with pytest.raises(ValueError, match=r"no episodes"):
        EpisodeStore.from_episodes([], StoreMetadata(source="empty.hdf5"))
    with pytest.raises(ValueError, match=r"empty.hdf5"):
        EpisodeStore(
            np.zeros((0, 3)), np.zeros((0, 2)), np.zeros(0), np.zeros(0, bool), np.zeros(0, bool),
            np.zeros((0, 3)), np.array([0]), StoreMetadata(source="empty.hdf5"),
        )  # fmt: skip


def test_store_rejects_episode_without_end_flag() -> None:
    episodes = random_episodes(np.random.default_rng(8), [3, 4, 5])
    episodes[2]["terminations"][-1] = False
    episodes[2]["truncations"][-1] = False
    with pytest.raises(ValueError, match=r"episode 2: .*neither terminated nor truncated"):
        EpisodeStore.from_episodes(episodes)


def test_store_rejects_flag_before_episode_end() -> None:
    episodes = random_episodes(np.random.default_rng(9), [3, 4])
    episodes[1]["terminations"][1] = True
    with pytest.raises(ValueError, match=r"field 'terminations', episode 1: flag set at step 1"):
        EpisodeStore.from_episodes(episodes)


def test_store_rejects_non_boolean_flags() -> None:
    episodes = random_episodes(np.random.default_rng(10), [3])
    episodes[0]["terminations"] = np.array([0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match=r"field 'terminations', episode 0: flag values"):
        EpisodeStore.from_episodes(episodes)


def test_store_rejects_observations_that_do_not_match_the_env() -> None:
    store = random_store(seed=11, obs_shape=(3,), act_dim=2)
    env_obs = gym.spaces.Box(-1, 1, shape=(4,))
    act = gym.spaces.Box(-1, 1, shape=(2,))
    with pytest.raises(ValueError, match=r"field 'observations'.*\(3,\) does not match.*Hopper"):
        store.check_spaces(env_obs, act, "Hopper-v5")
    with pytest.raises(ValueError, match=r"field 'actions'"):
        store.check_spaces(gym.spaces.Box(-1, 1, shape=(3,)), gym.spaces.Discrete(2))
    store.check_spaces(gym.spaces.Box(-1, 1, shape=(3,)), act)  # matching spaces pass


def test_store_rejects_discrete_actions_outside_the_space() -> None:
    episodes = random_episodes(np.random.default_rng(12), [4, 4], act_dim=None, num_actions=4)
    meta = StoreMetadata(action_space=gym.spaces.Discrete(3), source="cartpole.hdf5")
    episodes[0]["actions"][:] = 3
    with pytest.raises(ValueError, match=r"cartpole.hdf5: field 'actions'.*outside Discrete"):
        EpisodeStore.from_episodes(episodes, meta)


def test_store_summary_reports_sizes_returns_and_reference_scores() -> None:
    meta = StoreMetadata(dataset_id="x/y-v0", ref_min_score=-1.0, ref_max_score=5.0)
    store = random_store(seed=13, num_episodes=4, metadata=meta)
    summary = store.summary()
    assert summary["episodes"] == 4 and summary["steps"] == store.num_steps
    assert summary["return_mean"] == pytest.approx(store.episode_returns.mean())
    assert summary["ref_min_score"] == -1.0 and summary["ref_max_score"] == 5.0
    assert summary["terminated_episodes"] == int(
        store.terminations[store.episode_offsets[1:] - 1].sum()
    )


def test_store_stats_give_ranges_of_observations_actions_rewards_and_returns() -> None:
    episodes = [
        {
            "observations": np.array([[0.0, 5.0], [2.0, -1.0], [100.0, 100.0]], np.float32),
            "actions": np.array([[0.5, -2.0], [-0.25, 3.0]], np.float32),
            "rewards": np.array([1.0, 2.0]),
            "terminations": np.array([False, True]),
            "truncations": np.array([False, False]),
        },
        {
            "observations": np.array([[-4.0, 1.0], [-100.0, -100.0]], np.float32),
            "actions": np.array([[1.0, 0.0]], np.float32),
            "rewards": np.array([-7.0]),
            "terminations": np.array([False]),
            "truncations": np.array([True]),
        },
    ]
    store = EpisodeStore.from_episodes(episodes)
    stats = store.stats()
    assert set(stats) == {
        "observation_mean", "observation_std", "observation_min", "observation_max",
        "action_min", "action_max", "reward_min", "reward_max", "return_min", "return_max",
    }  # fmt: skip
    assert set(stats) == set(DataStats.__annotations__)  # what agents are built from
    assert np.array_equal(stats["observation_mean"], store.observation_mean)
    assert np.array_equal(stats["observation_std"], store.observation_std)
    # Ranges over the steps' observations: the final observations (+-100) are not counted.
    assert stats["observation_min"].tolist() == [-4.0, -1.0]
    assert stats["observation_max"].tolist() == [2.0, 5.0]
    assert stats["action_min"].tolist() == [-0.25, -2.0]
    assert stats["action_max"].tolist() == [1.0, 3.0]
    assert (stats["reward_min"], stats["reward_max"]) == (-7.0, 2.0)
    assert (stats["return_min"], stats["return_max"]) == (-7.0, 3.0)
    assert all(type(stats[key]) is float for key in ("reward_min", "return_max"))


def test_store_stats_have_no_action_range_for_discrete_actions() -> None:
    store = random_store(seed=3, act_dim=None, num_actions=4)
    stats = store.stats()
    assert stats["action_min"] is None and stats["action_max"] is None
    assert stats["observation_min"].shape == store.observation_shape
    assert stats["return_max"] == pytest.approx(store.episode_returns.max())
