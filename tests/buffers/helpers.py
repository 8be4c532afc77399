"""Small random datasets for the buffer tests (tests never touch the shared benchmark data)."""

from __future__ import annotations

import numpy as np

from seqrl.buffers import EpisodeStore, StoreMetadata


def random_episodes(
    rng: np.random.Generator,
    lengths: list[int],
    obs_shape: tuple[int, ...] = (3,),
    act_dim: int | None = 2,
    num_actions: int = 4,
    obs_dtype: np.dtype | type = np.float32,
    truncate_every: int = 3,
) -> list[dict[str, np.ndarray]]:
    """Episodes in Minari's layout (T + 1 observations); every `truncate_every`-th is truncated.

    `act_dim=None` gives Discrete actions in [0, num_actions); integer `obs_dtype` gives Discrete
    observations (with `obs_shape=()`) or images (uint8 with a shape).
    """
    episodes = []
    for e, length in enumerate(lengths):
        if np.issubdtype(np.dtype(obs_dtype), np.integer):
            high = 10 if obs_shape == () else 256
            obs = rng.integers(0, high, size=(length + 1, *obs_shape)).astype(obs_dtype)
        else:
            obs = rng.normal(size=(length + 1, *obs_shape)).astype(obs_dtype)
        if act_dim is None:
            actions = rng.integers(0, num_actions, size=length).astype(np.int64)
        else:
            actions = rng.uniform(-1, 1, size=(length, act_dim)).astype(np.float32)
        truncated = e % truncate_every == truncate_every - 1
        terminations = np.zeros(length, dtype=bool)
        truncations = np.zeros(length, dtype=bool)
        (truncations if truncated else terminations)[-1] = True
        episodes.append(
            {
                "observations": obs,
                "actions": actions,
                "rewards": rng.normal(size=length).astype(np.float64),
                "terminations": terminations,
                "truncations": truncations,
            }
        )
    return episodes


def random_store(
    seed: int = 0,
    num_episodes: int = 6,
    max_len: int = 12,
    metadata: StoreMetadata | None = None,
    **kwargs: object,
) -> EpisodeStore:
    """A store of `num_episodes` random episodes of 1..max_len steps."""
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(1, max_len + 1, size=num_episodes)]
    return EpisodeStore.from_episodes(random_episodes(rng, lengths, **kwargs), metadata)  # type: ignore[arg-type]


def assert_same_arrays(a: EpisodeStore, b: EpisodeStore) -> None:
    """Every array of two stores is equal, with the same dtype and shape."""
    for name in (
        "observations",
        "actions",
        "rewards",
        "terminations",
        "truncations",
        "final_observations",
        "episode_offsets",
    ):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, f"{name}: dtype {x.dtype} != {y.dtype}"
        assert x.shape == y.shape, f"{name}: shape {x.shape} != {y.shape}"
        assert np.array_equal(x, y), f"{name}: values differ"
