"""D4RL-layout HDF5: splitting, round trips, and the rejection of bad files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pytest

from seqrl.buffers import (
    StoreMetadata,
    load_d4rl,
    load_d4rl_hdf5,
    load_dataset,
    write_d4rl_hdf5,
)
from tests.buffers.helpers import assert_same_arrays, random_store


def write_arrays(path: Path, **arrays: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


def flat_arrays(num_steps: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Flat D4RL arrays: episodes end at steps 2 (terminal), 5 (timeout), 9 (terminal)."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(num_steps, bool)
    timeouts = np.zeros(num_steps, bool)
    terminals[[2, 9]] = True
    timeouts[5] = True
    return {
        "observations": rng.normal(size=(num_steps, 3)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(num_steps, 2)).astype(np.float32),
        "rewards": rng.normal(size=num_steps).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def test_d4rl_hdf5_round_trip_preserves_every_array(tmp_path: Path) -> None:
    meta = StoreMetadata(env_id="Pendulum-v1", dataset_id="pend", ref_min_score=-1.5,
                         ref_max_score=2.5)  # fmt: skip
    store = random_store(seed=0, num_episodes=7, metadata=meta)
    path = write_d4rl_hdf5(store, tmp_path / "data.hdf5")
    loaded = load_d4rl_hdf5(path)
    assert_same_arrays(store, loaded)
    assert (loaded.metadata.env_id, loaded.metadata.dataset_id) == ("Pendulum-v1", "pend")
    assert (loaded.metadata.ref_min_score, loaded.metadata.ref_max_score) == (-1.5, 2.5)
    assert "final_observations" not in loaded.metadata.extra  # came from next_observations


def test_d4rl_hdf5_round_trip_with_discrete_actions(tmp_path: Path) -> None:
    store = random_store(seed=1, act_dim=None, num_actions=5)
    assert_same_arrays(store, load_dataset(write_d4rl_hdf5(store, tmp_path / "d.h5")))


def test_d4rl_hdf5_splits_on_terminals_and_timeouts(tmp_path: Path) -> None:
    arrays = flat_arrays()
    next_obs = np.roll(arrays["observations"], -1, axis=0)
    next_obs[[2, 5, 9]] = [[7.0, 7.0, 7.0], [8.0, 8.0, 8.0], [9.0, 9.0, 9.0]]
    store = load_d4rl_hdf5(write_arrays(tmp_path / "f.hdf5", **arrays, next_observations=next_obs))
    assert store.episode_offsets.tolist() == [0, 3, 6, 10]
    # the timeout step is kept, as the truncated last step of episode 1
    assert store.truncations.tolist() == arrays["timeouts"].tolist()
    assert store.terminations.tolist() == arrays["terminals"].tolist()
    assert np.array_equal(store.rewards, arrays["rewards"])
    assert store.final_observations[:, 0].tolist() == [7.0, 8.0, 9.0]


def test_d4rl_hdf5_without_next_observations_repeats_the_last_one(tmp_path: Path) -> None:
    arrays = flat_arrays()
    store = load_d4rl_hdf5(write_arrays(tmp_path / "f.hdf5", **arrays))
    assert np.array_equal(store.final_observations, arrays["observations"][[2, 5, 9]])
    assert "repeated" in store.metadata.extra["final_observations"]


@pytest.mark.parametrize("key", ["observations", "actions", "rewards", "terminals", "timeouts"])
def test_d4rl_hdf5_rejects_missing_key(tmp_path: Path, key: str) -> None:
    arrays = flat_arrays()
    del arrays[key]
    path = write_arrays(tmp_path / "bad.hdf5", **arrays)
    with pytest.raises(ValueError, match=rf"bad.hdf5: field '{key}': missing key.*Fix"):
        load_d4rl_hdf5(path)


def test_d4rl_hdf5_rejects_ragged_arrays(tmp_path: Path) -> None:
    arrays = flat_arrays()
    arrays["actions"] = arrays["actions"][:-2]
    with pytest.raises(ValueError, match=r"field 'actions': ragged arrays: 8 rows.*10"):
        load_d4rl_hdf5(write_arrays(tmp_path / "r.hdf5", **arrays))


def test_d4rl_hdf5_rejects_nan_naming_the_episode(tmp_path: Path) -> None:
    arrays = flat_arrays()
    arrays["rewards"][7] = np.nan
    with pytest.raises(ValueError, match=r"n.hdf5: field 'rewards', episode 2: non-finite.*step 1"):
        load_d4rl_hdf5(write_arrays(tmp_path / "n.hdf5", **arrays))


def test_d4rl_hdf5_rejects_empty_file(tmp_path: Path) -> None:
    arrays = {k: v[:0] for k, v in flat_arrays().items()}
    with pytest.raises(ValueError, match=r"e.hdf5: field 'observations': the dataset is empty"):
        load_d4rl_hdf5(write_arrays(tmp_path / "e.hdf5", **arrays))


def test_d4rl_hdf5_incomplete_last_episode_is_an_error_unless_chosen(tmp_path: Path) -> None:
    arrays = flat_arrays(num_steps=13)  # steps 10..12 carry no flag
    path = write_arrays(tmp_path / "cut.hdf5", **arrays)
    with pytest.raises(ValueError, match=r"last 3 step.*incomplete_last_episode='truncate'"):
        load_d4rl_hdf5(path)
    kept = load_d4rl_hdf5(path, incomplete_last_episode="truncate")
    assert kept.num_steps == 13 and kept.episode_offsets.tolist() == [0, 3, 6, 10, 13]
    assert kept.truncations[-1] and not kept.terminations[-1]
    dropped = load_d4rl_hdf5(path, incomplete_last_episode="drop")
    assert dropped.num_steps == 10 and dropped.metadata.extra["dropped_steps"] == 3


def test_d4rl_hdf5_rejects_next_observations_that_skip(tmp_path: Path) -> None:
    arrays = flat_arrays()
    next_obs = np.roll(arrays["observations"], -1, axis=0)
    next_obs[4] += 1.0  # inside episode 1 (steps 3..5)
    path = write_arrays(tmp_path / "s.hdf5", **arrays, next_observations=next_obs)
    with pytest.raises(ValueError, match=r"field 'next_observations', episode 1: .*\[4\]"):
        load_d4rl_hdf5(path)


def test_d4rl_hdf5_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope.hdf5: no such file"):
        load_d4rl_hdf5(tmp_path / "nope.hdf5")


def test_d4rl_hdf5_writer_refuses_to_overwrite(tmp_path: Path) -> None:
    store = random_store(seed=3)
    path = write_d4rl_hdf5(store, tmp_path / "x.hdf5")
    with pytest.raises(FileExistsError, match=r"already exists"):
        write_d4rl_hdf5(store, path)
    write_d4rl_hdf5(store, path, overwrite=True)


@pytest.mark.skipif(importlib.util.find_spec("d4rl") is not None, reason="d4rl is installed")
def test_load_d4rl_without_the_package_points_to_the_alternatives() -> None:
    with pytest.raises(ImportError, match=r"load_d4rl_hdf5.*load_minari"):
        load_d4rl("hopper-medium-v2")


def test_d4rl_hdf5_rejects_data_that_does_not_fit_the_env(tmp_path: Path) -> None:
    path = write_arrays(tmp_path / "pend.hdf5", **flat_arrays())  # 3-dim obs, 2-dim actions
    with pytest.raises(ValueError, match=r"pend.hdf5: field 'actions'.*\(2,\).*Pendulum-v1"):
        load_d4rl_hdf5(path, env_id="Pendulum-v1")  # Pendulum: 3-dim obs, 1-dim action
    arrays = flat_arrays()
    arrays["actions"] = arrays["actions"][:, :1]
    store = load_d4rl_hdf5(write_arrays(tmp_path / "ok.hdf5", **arrays), env_id="Pendulum-v1")
    assert store.metadata.action_space.shape == (1,)
