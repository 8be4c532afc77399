"""WindowSampler against a plain-Python reference written like Decision Transformer's get_batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqrl.buffers import EpisodeStore, WindowSampler
from tests.buffers.helpers import random_episodes, random_store


def reference_window(
    store: EpisodeStore,
    start: int,
    context_len: int,
    gamma: float,
    return_scale: float,
    max_timestep: int | None,
    pad: str,
) -> dict[str, np.ndarray]:
    """One window, the slow obvious way: slice the episode, pad, mask."""
    episode = next(e for e in range(store.num_episodes) if store.episode_offsets[e + 1] > start)
    traj = store.episode(episode)
    si = start - int(store.episode_offsets[episode])
    rewards = [float(r) for r in traj.rewards]
    real = len(traj.observations[si : si + context_len])
    return_to_go = [
        sum(gamma ** (j - i) * rewards[j] for j in range(i, len(rewards))) / return_scale
        for i in range(si, si + real)
    ]
    steps = list(range(si, si + real))
    if max_timestep is not None:
        steps = [min(t, max_timestep) for t in steps]
    n_pad = context_len - real

    def padded(values: np.ndarray) -> np.ndarray:
        zeros = np.zeros((n_pad, *np.shape(values)[1:]), dtype=np.asarray(values).dtype)
        parts = [zeros, values] if pad == "left" else [values, zeros]
        return np.concatenate(parts)

    return {
        "observations": padded(traj.observations[si : si + real]),
        "actions": padded(traj.actions[si : si + real]),
        "rewards": padded(np.array(rewards[si : si + real])),
        "returns_to_go": padded(np.array(return_to_go)),
        "timesteps": padded(np.array(steps, dtype=np.int64)),
        "mask": padded(np.ones(real, dtype=bool)),
    }


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 25), min_size=1, max_size=6),
    context_len=st.integers(1, 30),
    gamma=st.one_of(st.just(1.0), st.floats(0.5, 1.0)),
    return_scale=st.sampled_from([1.0, 10.0, 1000.0]),
    max_timestep=st.one_of(st.none(), st.integers(0, 20)),
    pad=st.sampled_from(["left", "right"]),
    seed=st.integers(0, 2**16),
)
def test_window_sampler_matches_python_reference(
    lengths: list[int],
    context_len: int,
    gamma: float,
    return_scale: float,
    max_timestep: int | None,
    pad: str,
    seed: int,
) -> None:
    store = EpisodeStore.from_episodes(random_episodes(np.random.default_rng(seed), lengths))
    sampler = WindowSampler(store, context_len, batch_size=1, seed=seed, gamma=gamma,
                            return_scale=return_scale, max_timestep=max_timestep, pad=pad)  # fmt: skip
    starts = np.arange(store.num_steps)  # every possible window
    batch = sampler.gather(starts)
    for b, start in enumerate(starts):
        ref = reference_window(store, int(start), context_len, gamma, return_scale,
                               max_timestep, pad)  # fmt: skip
        assert torch.equal(batch.mask[b], torch.from_numpy(ref["mask"]))
        assert torch.equal(batch.timesteps[b], torch.from_numpy(ref["timesteps"]))
        np.testing.assert_array_equal(batch.observations[b].numpy(), ref["observations"])
        np.testing.assert_array_equal(batch.actions[b].numpy(), ref["actions"])
        np.testing.assert_allclose(batch.rewards[b].numpy(), ref["rewards"], rtol=1e-6)
        np.testing.assert_allclose(
            batch.returns_to_go[b].numpy(), ref["returns_to_go"], rtol=1e-5, atol=1e-5
        )


def test_window_sampler_masks_padding() -> None:
    rng = np.random.default_rng(0)
    store = EpisodeStore.from_episodes(random_episodes(rng, [3, 6]))
    left = WindowSampler(store, context_len=5, batch_size=1, pad="left").gather(np.array([0]))
    assert left.mask[0].tolist() == [False, False, True, True, True]
    assert left.timesteps[0].tolist() == [0, 0, 0, 1, 2]
    assert torch.all(left.observations[0, :2] == 0) and torch.all(left.actions[0, :2] == 0)
    assert torch.all(left.rewards[0, :2] == 0) and torch.all(left.returns_to_go[0, :2] == 0)
    assert torch.equal(left.observations[0, 2:], torch.from_numpy(store.observations[:3]))
    right = WindowSampler(store, context_len=5, batch_size=1, pad="right").gather(np.array([1]))
    assert right.mask[0].tolist() == [True, True, False, False, False]
    assert right.timesteps[0].tolist() == [1, 2, 0, 0, 0]


def test_window_sampler_return_to_go_is_undiscounted_and_scaled() -> None:
    episodes = random_episodes(np.random.default_rng(1), [4])
    episodes[0]["rewards"] = np.array([1.0, 2.0, 3.0, 4.0])
    store = EpisodeStore.from_episodes(episodes)
    batch = WindowSampler(store, 4, 1, return_scale=10.0).gather(np.array([0]))
    np.testing.assert_allclose(batch.returns_to_go[0].numpy(), [1.0, 0.9, 0.7, 0.4], rtol=1e-6)


def test_window_sampler_clips_timesteps() -> None:
    store = EpisodeStore.from_episodes(random_episodes(np.random.default_rng(2), [10]))
    batch = WindowSampler(store, 4, 1, max_timestep=7).gather(np.array([5]))
    assert batch.timesteps[0].tolist() == [5, 6, 7, 7]


def test_window_sampler_is_deterministic_for_a_seed() -> None:
    store = random_store(seed=3, num_episodes=20)
    a, b = (WindowSampler(store, 6, 16, seed=7) for _ in range(2))
    other = WindowSampler(store, 6, 16, seed=8)
    for _ in range(3):
        x, y, z = a.sample(), b.sample(), other.sample()
        assert torch.equal(x.observations, y.observations) and torch.equal(x.mask, y.mask)
    assert not torch.equal(x.timesteps, z.timesteps)
    state = a.state_dict()
    expected = a.sample()
    b.load_state_dict(state)
    assert torch.equal(b.sample().returns_to_go, expected.returns_to_go)


def test_window_sampler_picks_episodes_in_proportion_to_their_length() -> None:
    rng = np.random.default_rng(4)
    store = EpisodeStore.from_episodes(random_episodes(rng, [2, 50, 10, 100]))
    sampler = WindowSampler(store, 5, 512, seed=0)
    starts = np.concatenate([sampler.sample_steps() for _ in range(80)])  # 40960 draws
    counts = np.bincount(store.episode_index[starts], minlength=4)
    expected = store.episode_lengths / store.num_steps * len(starts)
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected) + 1)
    assert len(np.unique(starts)) == store.num_steps  # every step can start a window


def test_window_batch_shapes_and_dtypes() -> None:
    discrete = random_store(seed=5, act_dim=None, obs_shape=(4, 4, 3), obs_dtype=np.uint8)
    batch = WindowSampler(discrete, 7, 9, seed=0).sample()
    assert batch.observations.shape == (9, 7, 4, 4, 3) and batch.observations.dtype == torch.uint8
    assert batch.actions.shape == (9, 7) and batch.actions.dtype == torch.int64
    assert batch.rewards.dtype == batch.returns_to_go.dtype == torch.float32
    assert batch.timesteps.dtype == torch.int64 and batch.mask.dtype == torch.bool
    continuous = random_store(seed=6, obs_dtype=np.float64)
    batch = WindowSampler(continuous, 3, 2, seed=0).sample()
    assert batch.observations.dtype == batch.actions.dtype == torch.float32
    assert batch.actions.shape == (2, 3, 2)


def test_window_sampler_rejects_bad_arguments() -> None:
    store = random_store(seed=7)
    with pytest.raises(ValueError, match=r"context_len"):
        WindowSampler(store, 0, 4)
    with pytest.raises(ValueError, match=r"pad"):
        WindowSampler(store, 3, 4, pad="middle")  # type: ignore[arg-type]
    with pytest.raises(IndexError):
        WindowSampler(store, 3, 4).gather(np.array([store.num_steps]))
