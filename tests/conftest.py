"""Shared test settings: few threads (the CI machine has 2 cores), GPU tests skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.buffers.helpers import random_episodes

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def pendulum_dataset(tmp_path):
    """A small Pendulum-v1 dataset in D4RL layout (random data: shapes matter, not quality)."""
    from seqrl.buffers import EpisodeStore, StoreMetadata, save_dataset

    rng = np.random.default_rng(0)
    episodes = random_episodes(rng, [15, 9, 12, 20], obs_shape=(3,), act_dim=1)
    for episode in episodes:
        episode["actions"] *= 2.0  # Pendulum's Box(-2, 2)
    meta = StoreMetadata(env_id="Pendulum-v1", dataset_id="tiny-pendulum")
    path = tmp_path / "tiny-pendulum.hdf5"
    save_dataset(EpisodeStore.from_episodes(episodes, meta), path)
    return path


@pytest.fixture
def async_env_spy(monkeypatch):
    """Records, per vector env `seqrl.envs.evaluate` makes, whether it is an AsyncVectorEnv."""
    import importlib

    import gymnasium as gym

    from seqrl.envs.factory import make_vector_env

    made: list[bool] = []

    def spy(*args, **kwargs):
        envs = make_vector_env(*args, **kwargs)
        made.append(isinstance(envs, gym.vector.AsyncVectorEnv))
        return envs

    # seqrl.envs exports a function named evaluate: reach the module itself
    monkeypatch.setattr(importlib.import_module("seqrl.envs.evaluate"), "make_vector_env", spy)
    return made
