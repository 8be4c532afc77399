"""Minari: round trips, datasets recorded by minari.DataCollector, and missing datasets."""

from __future__ import annotations

import importlib.util
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import minari
import numpy as np
import pytest

from seqrl.buffers import StoreMetadata, load_dataset, load_minari, write_minari
from tests.buffers.helpers import assert_same_arrays, random_store


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # Box observations (float32), Box actions
        {"act_dim": None, "num_actions": 3},  # Discrete actions
        {"obs_shape": (), "obs_dtype": np.int64, "act_dim": None},  # Discrete observations
        {"obs_shape": (8, 8, 3), "obs_dtype": np.uint8},  # images: must not be JPEG-encoded
        {"obs_dtype": np.float64},
    ],
    ids=["box", "discrete-actions", "discrete-obs", "image-obs", "float64-obs"],
)
def test_minari_round_trip_preserves_every_array(minari_root: Path, kwargs: dict) -> None:
    store = random_store(seed=0, num_episodes=5, **kwargs)
    path = write_minari(store, "test/rt/data-v0")
    assert path == minari_root / "test/rt/data-v0"
    loaded = load_minari("test/rt/data-v0")
    assert_same_arrays(store, loaded)
    assert loaded.metadata.dataset_id == "test/rt/data-v0"


def test_minari_round_trip_keeps_env_and_reference_scores(minari_root: Path) -> None:
    env = gym.make("Pendulum-v1")
    meta = StoreMetadata(
        env_id="Pendulum-v1", ref_min_score=-1200.0, ref_max_score=-150.0,
        observation_space=env.observation_space, action_space=env.action_space,
    )  # fmt: skip
    store = random_store(seed=1, obs_shape=(3,), act_dim=1, metadata=meta)
    write_minari(store, "test/pend/meta-v0")
    loaded = load_dataset("test/pend/meta-v0")
    assert loaded.metadata.env_id == "Pendulum-v1"
    assert (loaded.metadata.ref_min_score, loaded.metadata.ref_max_score) == (-1200.0, -150.0)
    assert loaded.metadata.observation_space == env.observation_space
    dataset = minari.load_dataset("test/pend/meta-v0")  # Minari itself reads the scores
    assert minari.get_normalized_score(dataset, np.array([-150.0]))[0] == pytest.approx(1.0)


def test_load_minari_by_folder_path(minari_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = random_store(seed=2)
    folder = write_minari(store, "test/path/data-v0")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root / "elsewhere"))
    assert_same_arrays(store, load_minari(folder))
    assert_same_arrays(store, load_minari(folder / "data"))


def test_missing_minari_id_fails_fast_with_instructions(minari_root: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        load_minari("mujoco/hopper/medium-v0")
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    assert "minari download mujoco/hopper/medium-v0" in message
    assert str(minari_root) in message and "MINARI_DATASETS_PATH" in message


def test_malformed_minari_id_is_a_clear_error(minari_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"neither an existing path nor a Minari"):
        load_minari("not a dataset")


def test_write_minari_refuses_an_existing_dataset(minari_root: Path) -> None:
    store = random_store(seed=3)
    write_minari(store, "test/dup/data-v0")
    with pytest.raises(FileExistsError, match=r"already exists.*overwrite"):
        write_minari(store, "test/dup/data-v0")
    other = random_store(seed=4)
    write_minari(other, "test/dup/data-v0", overwrite=True)
    assert_same_arrays(other, load_minari("test/dup/data-v0"))


def test_load_minari_rejects_data_that_does_not_match_its_spaces(minari_root: Path) -> None:
    store = random_store(seed=5, obs_shape=(3,))
    store.metadata.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(4,))
    store.metadata.action_space = gym.spaces.Box(-1, 1, shape=(2,))
    # write_minari does not re-validate; the mismatch is caught when loading
    write_minari(store, "test/bad/shape-v0")
    with pytest.raises(ValueError, match=r"shape-v0: field 'observations'.*\(3,\) does not match"):
        load_minari("test/bad/shape-v0")


# ------------------------------------------------------------------------- minari.DataCollector


def _tree_map(fn: Any, tree: Any, *rest: Any) -> Any:
    """jax.tree_util.tree_map for the dicts / tuples / leaves DataCollector hands it."""
    if isinstance(tree, dict):
        return {k: _tree_map(fn, tree[k], *(r[k] for r in rest)) for k in tree}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_tree_map(fn, t, *(r[i] for r in rest)) for i, t in enumerate(tree))
    return fn(tree, *rest)


@pytest.fixture
def jax_tree_util(monkeypatch: pytest.MonkeyPatch) -> None:
    """DataCollector's episode buffer imports jax only for `tree_util.tree_map` (minari[create]
    pulls all of JAX); without JAX installed, provide that one function."""
    if importlib.util.find_spec("jax") is not None:
        return
    jax = types.ModuleType("jax")
    tree_util = types.ModuleType("jax.tree_util")
    tree_util.tree_map = _tree_map  # type: ignore[attr-defined]
    jax.tree_util = tree_util  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "jax", jax)
    monkeypatch.setitem(sys.modules, "jax.tree_util", tree_util)


def test_dataset_recorded_by_minari_datacollector_loads(
    minari_root: Path, jax_tree_util: None
) -> None:
    env = minari.DataCollector(gym.make("CartPole-v1", max_episode_steps=15))
    rng = np.random.default_rng(0)
    recorded = []
    for episode in range(4):
        obs, _ = env.reset(seed=episode)
        ep: dict[str, list] = {"observations": [obs], "actions": [], "rewards": []}
        while True:
            action = int(rng.integers(2))
            obs, reward, terminated, truncated, _ = env.step(action)
            ep["observations"].append(obs)
            ep["actions"].append(action)
            ep["rewards"].append(reward)
            if terminated or truncated:
                ep["terminated"] = terminated
                break
        recorded.append(ep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        env.create_dataset("test/cartpole/collector-v0", algorithm_name="random")
    env.close()

    store = load_minari("test/cartpole/collector-v0")
    assert store.metadata.env_id == "CartPole-v1"
    assert store.num_episodes == 4
    assert any(ep["terminated"] for ep in recorded) and not all(ep["terminated"] for ep in recorded)
    for e, ep in enumerate(recorded):
        view = store.episode(e)
        assert np.array_equal(view.observations, np.stack(ep["observations"][:-1]))
        assert np.array_equal(view.final_observation, ep["observations"][-1])
        assert view.actions.tolist() == ep["actions"]
        np.testing.assert_array_equal(view.rewards, ep["rewards"])
        assert bool(view.terminations[-1]) == ep["terminated"]
        assert bool(view.truncations[-1]) == (not ep["terminated"])
