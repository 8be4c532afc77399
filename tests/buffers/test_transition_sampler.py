"""TransitionSampler: n-step rewards, bootstrap observations, dones, discounts, MC returns."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqrl.buffers import EpisodeStore, TransitionSampler
from tests.buffers.helpers import random_episodes, random_store


def reference_transition(
    store: EpisodeStore, step: int, n_step: int, gamma: float
) -> dict[str, object]:
    episode = next(e for e in range(store.num_episodes) if store.episode_offsets[e + 1] > step)
    traj = store.episode(episode)
    i = step - int(store.episode_offsets[episode])
    length = len(traj)
    taken = min(n_step, length - i)
    rewards = [float(r) for r in traj.rewards]
    if i + taken < length:
        next_obs, done = traj.observations[i + taken], False
    else:
        next_obs, done = traj.final_observation, bool(traj.terminations[-1])
    return {
        "observation": traj.observations[i],
        "action": traj.actions[i],
        "reward": sum(gamma**j * rewards[i + j] for j in range(taken)),
        "next_observation": next_obs,
        "done": done,
        "discount": gamma**taken,
        "return_to_go": sum(gamma ** (j - i) * rewards[j] for j in range(i, length)),
    }


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 20), min_size=1, max_size=6),
    n_step=st.integers(1, 8),
    gamma=st.floats(0.5, 1.0),
    seed=st.integers(0, 2**16),
)
def test_transition_sampler_matches_python_reference(
    lengths: list[int], n_step: int, gamma: float, seed: int
) -> None:
    store = EpisodeStore.from_episodes(random_episodes(np.random.default_rng(seed), lengths))
    sampler = TransitionSampler(store, batch_size=1, seed=seed, n_step=n_step, gamma=gamma)
    steps = np.arange(store.num_steps)
    batch = sampler.gather(steps)
    for b, step in enumerate(steps):
        ref = reference_transition(store, int(step), n_step, gamma)
        np.testing.assert_array_equal(batch.observations[b].numpy(), ref["observation"])
        np.testing.assert_array_equal(batch.actions[b].numpy(), ref["action"])
        np.testing.assert_array_equal(batch.next_observations[b].numpy(), ref["next_observation"])
        assert bool(batch.dones[b]) == ref["done"]
        np.testing.assert_allclose(float(batch.rewards[b]), ref["reward"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(float(batch.discounts[b]), ref["discount"], rtol=1e-6)
        np.testing.assert_allclose(
            float(batch.returns_to_go[b]), ref["return_to_go"], rtol=1e-5, atol=1e-5
        )


def test_transition_sampler_bootstraps_truncated_episode_from_final_observation() -> None:
    episodes = random_episodes(np.random.default_rng(0), [4], truncate_every=1)
    store = EpisodeStore.from_episodes(episodes)
    assert store.truncations[-1] and not store.terminations[-1]
    batch = TransitionSampler(store, 1, n_step=3, gamma=0.9).gather(np.array([2]))
    assert not bool(batch.dones[0])  # truncated: bootstrap, not done
    assert torch.equal(batch.next_observations[0], torch.from_numpy(episodes[0]["observations"][4]))
    assert float(batch.discounts[0]) == np.float32(0.9**2)  # only 2 steps were left


def test_transition_sampler_marks_terminated_episode_done() -> None:
    episodes = random_episodes(np.random.default_rng(1), [5], truncate_every=99)
    store = EpisodeStore.from_episodes(episodes)
    sampler = TransitionSampler(store, 1, n_step=2, gamma=0.5)
    assert bool(sampler.gather(np.array([4])).dones[0])
    assert not bool(sampler.gather(np.array([2])).dones[0])  # 2 steps later is still inside


def test_transition_sampler_is_deterministic_for_a_seed() -> None:
    store = random_store(seed=2, num_episodes=10)
    a = TransitionSampler(store, 32, seed=5, n_step=3).sample()
    b = TransitionSampler(store, 32, seed=5, n_step=3).sample()
    c = TransitionSampler(store, 32, seed=6, n_step=3).sample()
    assert torch.equal(a.observations, b.observations) and torch.equal(a.rewards, b.rewards)
    assert not torch.equal(a.observations, c.observations)


def reference_window(traj, end_index: int, history: int) -> tuple[np.ndarray, np.ndarray]:
    """The `history` observations ending at episode step `end_index` (the final observation is
    step len(traj)), zeros and False before the episode's start."""
    observations = np.concatenate([traj.observations, traj.final_observation[None]])
    window = np.zeros((history, *observations.shape[1:]), observations.dtype)
    mask = np.zeros(history, dtype=bool)
    for j in range(history):
        source = end_index - (history - 1) + j
        if source >= 0:
            window[j], mask[j] = observations[source], True
    return window, mask


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    n_step=st.integers(1, 5),
    history=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_transition_sampler_history_windows_match_python_reference(
    lengths: list[int], n_step: int, history: int, seed: int
) -> None:
    store = EpisodeStore.from_episodes(random_episodes(np.random.default_rng(seed), lengths))
    sampler = TransitionSampler(store, 1, seed=seed, n_step=n_step, gamma=0.9, history=history)
    steps = np.arange(store.num_steps)
    batch = sampler.gather(steps)
    plain = TransitionSampler(store, 1, seed=seed, n_step=n_step, gamma=0.9).gather(steps)
    assert plain.observation_window is None  # no history: no windows, the old batch
    assert torch.equal(plain.steps_to_end, batch.steps_to_end)
    for b, step in enumerate(steps):
        episode = int(store.episode_index[step])
        traj = store.episode(episode)
        i = int(step - store.episode_offsets[episode])
        assert int(batch.steps_to_end[b]) == len(traj) - i
        window, mask = reference_window(traj, i, history)
        np.testing.assert_array_equal(batch.observation_window[b].numpy(), window)
        np.testing.assert_array_equal(batch.window_mask[b].numpy(), mask)
        next_window, next_mask = reference_window(traj, i + min(n_step, len(traj) - i), history)
        np.testing.assert_array_equal(batch.next_observation_window[b].numpy(), next_window)
        np.testing.assert_array_equal(batch.next_window_mask[b].numpy(), next_mask)
        # the windows end at the transition's own observations
        assert torch.equal(batch.observation_window[b, -1], batch.observations[b])
        assert torch.equal(batch.next_observation_window[b, -1], batch.next_observations[b])


def test_transition_sampler_with_history_resumes_from_its_state_dict() -> None:
    store = random_store(seed=3, num_episodes=8)
    sampler = TransitionSampler(store, 16, seed=4, n_step=2, history=3)
    sampler.sample()
    state = sampler.state_dict()
    expected = sampler.sample()
    resumed = TransitionSampler(store, 16, seed=99, n_step=2, history=3)
    resumed.load_state_dict(state)
    got = resumed.sample()
    for name, value in vars(expected).items():
        assert torch.equal(value, vars(got)[name]), name
    assert not torch.equal(expected.observation_window, sampler.sample().observation_window)
