"""Training-batch samplers over an `EpisodeStore`, with numba kernels doing the gathering.

`WindowSampler` (Decision Transformer, behaviour cloning, diffusion policies) draws windows of
K consecutive steps, the way the reference Decision Transformer's `get_batch` does
(kzl/decision-transformer, `gym/experiment.py`), with these deliberate differences:

- start steps are drawn uniformly over all N steps of the store. The reference draws an episode
  with probability proportional to its length, then a uniform start inside it: the same
  distribution, in one draw;
- padding (windows that reach an episode's end) is 0 everywhere, actions included (the reference
  pads actions with -10); padded steps have `mask == False`, so a loss that honours the mask
  never sees them. `pad="left"` (the reference's choice) puts padding before the real steps,
  `pad="right"` after them;
- return-to-go is computed once per store (not once per sample): for step t of an episode,
  sum_{i>=t} gamma^(i-t) r_i over the recorded rewards, divided by `return_scale`. gamma = 1 is
  the reference's undiscounted return-to-go. A truncated episode gets no bootstrap value: its
  return-to-go is just the sum of its recorded rewards;
- observations are returned raw (normalize with `store.observation_mean` / `observation_std` in
  the model); the reference normalizes inside `get_batch`.

`TransitionSampler` (Q-Transformer and other value-based agents) draws single steps with their
n-step discounted reward, the observation to bootstrap from (n steps later, or the episode's
final observation), `dones` (the episode terminated within the n steps), the bootstrap factor
gamma^m (m <= n steps actually taken), the Monte-Carlo discounted return-to-go and the number of
steps it sums. With `history=W` it adds the W observations ending at the step and at the
bootstrap observation (left-padded at the episode's start, with masks):

```
  episode     o_0  o_1  o_2  o_3  o_4  (final o_5)        W = 3, n = 2, step t = 1
  window      [pad  o_0  o_1]                            window_mask      [F T T]
  next        [o_1  o_2  o_3]                            next_window_mask [T T T]
```

Both are deterministic for a given seed: indices come from a NumPy `Generator`, the kernels are
plain loops. Batches are `torch.from_numpy` views of the kernels' output arrays (no extra copy).
Output dtypes: float observations/actions/rewards -> float32; Discrete (integer, 1-D) observations
and integer actions -> int64; other integer observations (uint8 images) keep their dtype.
"""

from __future__ import annotations

from typing import Any, Literal

import numba
import numpy as np
import torch

from seqrl.buffers.episode_store import EpisodeStore
from seqrl.core import TransitionBatch, WindowBatch

# ---------------------------------------------------------------------------------------- kernels


@numba.njit(cache=True)
def discounted_returns_to_go(
    rewards: np.ndarray, offsets: np.ndarray, gamma: float
) -> np.ndarray:  # pragma: no cover - compiled
    """Return-to-go of every step within its own episode, float64 (N,)."""
    out = np.empty(rewards.shape[0], dtype=np.float64)
    for e in range(offsets.shape[0] - 1):
        acc = 0.0
        for t in range(offsets[e + 1] - 1, offsets[e] - 1, -1):
            acc = rewards[t] + gamma * acc
            out[t] = acc
    return out


@numba.njit(cache=True)
def gather_windows(
    starts, episode_index, offsets, timesteps, context_len, left_pad, max_timestep,
    obs2d, act2d, rewards, returns_to_go,
    out_obs, out_act, out_rew, out_rtg, out_ts, out_mask,
):  # fmt: skip  # pragma: no cover - compiled
    """Fill (B, K, ...) outputs (pre-zeroed) with windows [start, start + K) clipped at the
    episode's end; real steps go to the right end (left padding) or the left end."""
    for b in range(starts.shape[0]):
        start = starts[b]
        end = offsets[episode_index[start] + 1]
        length = min(context_len, end - start)
        first = context_len - length if left_pad else 0
        for j in range(length):
            k, t = first + j, start + j
            for d in range(obs2d.shape[1]):
                out_obs[b, k, d] = obs2d[t, d]
            for d in range(act2d.shape[1]):
                out_act[b, k, d] = act2d[t, d]
            out_rew[b, k] = rewards[t]
            out_rtg[b, k] = returns_to_go[t]
            step = timesteps[t]
            if max_timestep >= 0 and step > max_timestep:
                step = max_timestep
            out_ts[b, k] = step
            out_mask[b, k] = True


@numba.njit(cache=True)
def gather_transitions(
    idx, episode_index, offsets, n_step, gamma, obs2d, act2d, rewards, terminations,
    final_obs2d, mc_returns,
    out_obs, out_act, out_rew, out_next, out_done, out_discount, out_rtg,
):  # fmt: skip  # pragma: no cover - compiled
    """Fill (B, ...) outputs with n-step transitions starting at steps `idx`."""
    for b in range(idx.shape[0]):
        t = idx[b]
        e = episode_index[t]
        end = offsets[e + 1]
        taken = min(n_step, end - t)
        acc = 0.0
        factor = 1.0
        for i in range(taken):
            acc += factor * rewards[t + i]
            factor *= gamma
        out_rew[b] = acc
        out_discount[b] = factor
        out_rtg[b] = mc_returns[t]
        if t + taken < end:
            for d in range(obs2d.shape[1]):
                out_next[b, d] = obs2d[t + taken, d]
            out_done[b] = False
        else:
            for d in range(obs2d.shape[1]):
                out_next[b, d] = final_obs2d[e, d]
            out_done[b] = terminations[end - 1]
        for d in range(obs2d.shape[1]):
            out_obs[b, d] = obs2d[t, d]
        for d in range(act2d.shape[1]):
            out_act[b, d] = act2d[t, d]


@numba.njit(cache=True)
def gather_history(
    idx, episode_index, offsets, n_step, history, obs2d, final_obs2d,
    out_win, out_mask, out_next_win, out_next_mask,
):  # fmt: skip  # pragma: no cover - compiled
    """Fill (B, W, D) observation windows (pre-zeroed) ending at steps `idx` and at their
    bootstrap steps (n later, or the episode's final observation, its step L), left-padded."""
    for b in range(idx.shape[0]):
        t = idx[b]
        e = episode_index[t]
        first, end = offsets[e], offsets[e + 1]
        bootstrap = t + min(n_step, end - t)  # flat index; == end means the final observation
        for j in range(history):
            src = t - (history - 1) + j
            if src >= first:
                out_mask[b, j] = True
                for d in range(obs2d.shape[1]):
                    out_win[b, j, d] = obs2d[src, d]
            src = bootstrap - (history - 1) + j
            if src >= first:
                out_next_mask[b, j] = True
                for d in range(obs2d.shape[1]):
                    out_next_win[b, j, d] = obs2d[src, d] if src < end else final_obs2d[e, d]


# ---------------------------------------------------------------------------------------- helpers


def _batch_dtype(array: np.ndarray) -> np.dtype:
    """float -> float32; integer 1-D (Discrete) -> int64; other integers keep their dtype."""
    if np.issubdtype(array.dtype, np.floating):
        return np.dtype(np.float32)
    if array.ndim == 1 or np.issubdtype(array.dtype, np.signedinteger):
        return np.dtype(np.int64)
    return array.dtype  # e.g. uint8 images, gathered as they are


def _as_2d(array: np.ndarray) -> np.ndarray:
    """(N, *shape) -> (N, prod(shape)) view; (N,) -> (N, 1)."""
    return array.reshape(len(array), -1)


class _Sampler:
    """Shared seeding and the flattened views of a store."""

    def __init__(self, store: EpisodeStore, batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.store = store
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self._obs2d = _as_2d(store.observations)  # (N, D_obs)
        self._act2d = _as_2d(store.actions)  # (N, D_act)
        self._obs_dtype = _batch_dtype(store.observations)
        self._act_dtype = _batch_dtype(store.actions)

    def sample_steps(self) -> np.ndarray:
        """B step indices drawn uniformly over all steps of the store, int64 (B,)."""
        return self.rng.integers(0, self.store.num_steps, size=self.batch_size, dtype=np.int64)

    def state_dict(self) -> dict[str, Any]:
        """The RNG state, so a resumed run draws the same batches."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


# ---------------------------------------------------------------------------------------- samplers


class WindowSampler(_Sampler):
    """Windows of `context_len` (K) steps with return-to-go, timesteps and a padding mask.

    Args:
        store: the episodes.
        context_len: K, steps per window.
        batch_size: B, windows per batch.
        seed: seed of the sampler's own RNG.
        gamma: discount of the return-to-go (1.0: undiscounted, as the reference DT).
        return_scale: return-to-go is divided by this (the reference DT uses 1000 for MuJoCo).
        max_timestep: timesteps above this are clipped to it (the reference's `max_ep_len - 1`);
            None keeps them as they are.
        pad: "left" (reference) puts padding before the real steps, "right" after them.
    """

    def __init__(
        self,
        store: EpisodeStore,
        context_len: int,
        batch_size: int,
        seed: int = 0,
        gamma: float = 1.0,
        return_scale: float = 1.0,
        max_timestep: int | None = None,
        pad: Literal["left", "right"] = "left",
    ) -> None:
        super().__init__(store, batch_size, seed)
        if context_len < 1:
            raise ValueError(f"context_len must be >= 1, got {context_len}")
        if pad not in ("left", "right"):
            raise ValueError(f"pad must be 'left' or 'right', got {pad!r}")
        if return_scale == 0 or not np.isfinite(return_scale):
            raise ValueError(f"return_scale must be finite and non-zero, got {return_scale}")
        if max_timestep is not None and max_timestep < 0:
            raise ValueError(f"max_timestep must be >= 0 or None, got {max_timestep}")
        self.context_len = context_len
        self.gamma = float(gamma)
        self.return_scale = float(return_scale)
        self.max_timestep = max_timestep
        self.pad = pad
        returns_to_go = discounted_returns_to_go(store.rewards, store.episode_offsets, self.gamma)
        self.returns_to_go = returns_to_go / self.return_scale  # (N,) float64, already scaled

    def sample(self) -> WindowBatch:
        """A batch of B windows; deterministic given the seed and the number of earlier calls."""
        return self.gather(self.sample_steps())

    def gather(self, starts: np.ndarray) -> WindowBatch:
        """The windows starting at the given step indices (B,) (flat indices into the store)."""
        store = self.store
        starts = np.ascontiguousarray(starts, dtype=np.int64)
        if starts.size and (starts.min() < 0 or starts.max() >= store.num_steps):
            raise IndexError(f"start steps must lie in [0, {store.num_steps})")
        batch, k = len(starts), self.context_len
        obs = np.zeros((batch, k, self._obs2d.shape[1]), dtype=self._obs_dtype)  # (B, K, D_obs)
        act = np.zeros((batch, k, self._act2d.shape[1]), dtype=self._act_dtype)  # (B, K, D_act)
        rewards = np.zeros((batch, k), dtype=np.float32)  # (B, K)
        returns_to_go = np.zeros((batch, k), dtype=np.float32)  # (B, K)
        timesteps = np.zeros((batch, k), dtype=np.int64)  # (B, K)
        mask = np.zeros((batch, k), dtype=np.bool_)  # (B, K)
        gather_windows(
            starts, store.episode_index, store.episode_offsets, store.timesteps, k,
            self.pad == "left", -1 if self.max_timestep is None else self.max_timestep,
            self._obs2d, self._act2d, store.rewards, self.returns_to_go,
            obs, act, rewards, returns_to_go, timesteps, mask,
        )  # fmt: skip
        return WindowBatch(
            observations=torch.from_numpy(obs.reshape(batch, k, *store.observation_shape)),
            actions=torch.from_numpy(act.reshape(batch, k, *store.action_shape)),
            rewards=torch.from_numpy(rewards),
            returns_to_go=torch.from_numpy(returns_to_go),
            timesteps=torch.from_numpy(timesteps),
            mask=torch.from_numpy(mask),
        )


class TransitionSampler(_Sampler):
    """n-step transitions with bootstrap observation, done, discount and Monte-Carlo return.

    Args:
        store: the episodes.
        batch_size: B, transitions per batch.
        seed: seed of the sampler's own RNG.
        n_step: rewards summed per transition (fewer when the episode ends first).
        gamma: discount of the n-step reward, the bootstrap factor and the Monte-Carlo return.
        history: W, observations per history window: batches then also hold
            `observation_window` / `window_mask` ending at the step and
            `next_observation_window` / `next_window_mask` ending at the bootstrap observation
            (B, W, ...), left-padded before the episode's start. None: no windows.
    """

    def __init__(
        self,
        store: EpisodeStore,
        batch_size: int,
        seed: int = 0,
        n_step: int = 1,
        gamma: float = 0.99,
        history: int | None = None,
    ) -> None:
        super().__init__(store, batch_size, seed)
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        if history is not None and history < 1:
            raise ValueError(f"history must be >= 1 or None, got {history}")
        self.history = history
        self.n_step = n_step
        self.gamma = float(gamma)
        self.returns_to_go = discounted_returns_to_go(
            store.rewards, store.episode_offsets, self.gamma
        )  # (N,) float64
        self._final2d = _as_2d(store.final_observations)  # (E, D_obs)

    def sample(self) -> TransitionBatch:
        """A batch of B transitions drawn uniformly over all steps."""
        return self.gather(self.sample_steps())

    def gather(self, steps: np.ndarray) -> TransitionBatch:
        """The transitions starting at the given flat step indices (B,)."""
        store = self.store
        steps = np.ascontiguousarray(steps, dtype=np.int64)
        if steps.size and (steps.min() < 0 or steps.max() >= store.num_steps):
            raise IndexError(f"steps must lie in [0, {store.num_steps})")
        batch = len(steps)
        obs = np.empty((batch, self._obs2d.shape[1]), dtype=self._obs_dtype)  # (B, D_obs)
        next_obs = np.empty_like(obs)  # (B, D_obs)
        act = np.empty((batch, self._act2d.shape[1]), dtype=self._act_dtype)  # (B, D_act)
        rewards = np.empty(batch, dtype=np.float32)  # (B,)
        dones = np.empty(batch, dtype=np.bool_)  # (B,)
        discounts = np.empty(batch, dtype=np.float32)  # (B,)
        returns_to_go = np.empty(batch, dtype=np.float32)  # (B,)
        gather_transitions(
            steps, store.episode_index, store.episode_offsets, self.n_step, self.gamma,
            self._obs2d, self._act2d, store.rewards, store.terminations, self._final2d,
            self.returns_to_go, obs, act, rewards, next_obs, dones, discounts, returns_to_go,
        )  # fmt: skip
        obs_shape = store.observation_shape
        steps_to_end = store.episode_offsets[store.episode_index[steps] + 1] - steps  # (B,)
        return TransitionBatch(
            observations=torch.from_numpy(obs.reshape(batch, *obs_shape)),
            actions=torch.from_numpy(act.reshape(batch, *store.action_shape)),
            rewards=torch.from_numpy(rewards),
            next_observations=torch.from_numpy(next_obs.reshape(batch, *obs_shape)),
            dones=torch.from_numpy(dones),
            discounts=torch.from_numpy(discounts),
            returns_to_go=torch.from_numpy(returns_to_go),
            steps_to_end=torch.from_numpy(steps_to_end.astype(np.int64)),
            **self._windows(steps),
        )

    def _windows(self, steps: np.ndarray) -> dict[str, torch.Tensor]:
        """The history windows of `steps` (B,) as TransitionBatch fields ({} without history)."""
        if self.history is None:
            return {}
        store, batch, width = self.store, len(steps), self.history
        window = np.zeros((batch, width, self._obs2d.shape[1]), self._obs_dtype)  # (B, W, D_obs)
        next_window = np.zeros_like(window)  # (B, W, D_obs)
        mask = np.zeros((batch, width), dtype=np.bool_)  # (B, W)
        next_mask = np.zeros_like(mask)  # (B, W)
        gather_history(
            steps, store.episode_index, store.episode_offsets, self.n_step, width,
            self._obs2d, self._final2d, window, mask, next_window, next_mask,
        )  # fmt: skip
        shape = (batch, width, *store.observation_shape)
        return {
            "observation_window": torch.from_numpy(window.reshape(shape)),
            "window_mask": torch.from_numpy(mask),
            "next_observation_window": torch.from_numpy(next_window.reshape(shape)),
            "next_window_mask": torch.from_numpy(next_mask),
        }
