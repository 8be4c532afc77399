"""The on-policy rollout buffer: N envs x R steps, cut into sequence chunks, plus GAE.

The online loop (`seqrl.train.online`) adds one step at a time: observations, the actions and
`PolicyStep.info` the policy returned, rewards and the termination / truncation flags. `finish`
returns a `Rollout` for `agent.update`.

Chunks (truncated backpropagation through time). Each env's R steps are cut into chunks of at
most `chunk_len` steps; a chunk also ends where an episode ends, so no chunk holds an episode
start except at its first step, and chunks are right-padded to `chunk_len` (`mask` False on
padding). The policy reports the memory it acted from in `info` under keys `"memory/<name>"`
(its state *before* the step, after any reset); the buffer keeps those rows only at chunk starts.
Replaying a chunk through the backbone's parallel forward from its stored state therefore sees
exactly what the policy saw during collection (`tests/buffers/test_rollout.py` checks this
log-prob for log-prob). Because the padding is on the right, a causal backbone's outputs at the
real steps do not depend on it.

Bootstrapping. A chunk that ends in a *truncated* episode, or at the end of the rollout with the
episode still running, carries a bootstrap observation: the true final observation
(`seqrl.envs.final_observations`) or the next observation. The agent evaluates V on it (with the
chunk's memory) and passes the values to `compute_gae`; terminated episodes do not bootstrap.

GAE (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
Estimation") runs as one numba kernel over the (R, N) arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numba
import numpy as np
import torch
from torch import Tensor

from seqrl.core import PolicyStep

MEMORY_PREFIX = "memory/"
"""`PolicyStep.info` keys starting with this are memory state, stored only at chunk starts."""


@numba.njit(cache=True)
def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    bootstrap_values: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns (value targets), both (R, N) float32.

    rewards, values (R, N): per step. terminated / truncated (R, N) bool: the episode ended at
    this step. bootstrap_values (R, N): V(final observation) where truncated, V(next
    observation) at the last step t = R - 1 of a running episode; ignored elsewhere. Advantages
    never flow across an episode end.
    """
    steps, num_envs = rewards.shape
    advantages = np.zeros((steps, num_envs), dtype=np.float32)
    for env in range(num_envs):
        running = 0.0
        for t in range(steps - 1, -1, -1):
            if terminated[t, env]:
                next_value, running = 0.0, 0.0
            elif truncated[t, env] or t == steps - 1:
                next_value, running = bootstrap_values[t, env], 0.0
            else:
                next_value = values[t + 1, env]
            delta = rewards[t, env] + gamma * next_value - values[t, env]
            running = delta + gamma * lam * running
            advantages[t, env] = running
    return advantages, (advantages + values).astype(np.float32)


@numba.njit(cache=True)
def _chunk_layout(
    chunk_start: np.ndarray, chunk_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flat indices (C, chunk_len) (-1 on padding), env (C,), first step (C,), length (C,).

    Chunks are numbered in (step, env) order of their start, the order memory rows are stored.
    """
    steps, num_envs = chunk_start.shape
    count = 0
    for t in range(steps):
        for env in range(num_envs):
            if chunk_start[t, env]:
                count += 1
    index = np.full((count, chunk_len), -1, dtype=np.int64)
    env_of = np.zeros(count, dtype=np.int64)
    first = np.zeros(count, dtype=np.int64)
    length = np.zeros(count, dtype=np.int64)
    chunk_at = np.full((steps, num_envs), -1, dtype=np.int64)
    c = 0
    for t in range(steps):
        for env in range(num_envs):
            if chunk_start[t, env]:
                chunk_at[t, env] = c
                env_of[c], first[c] = env, t
                c += 1
    for c in range(count):
        env, t = env_of[c], first[c]
        k = 0
        while t < steps and (k == 0 or not chunk_start[t, env]):
            index[c, k] = t * num_envs + env
            k += 1
            t += 1
        length[c] = k
    return index, env_of, first, length


def _to_tensor(value: np.ndarray | Tensor) -> Tensor:
    return value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))


@dataclass
class Rollout:
    """R steps of N envs, with the chunk layout for sequence models (what `update` receives)."""

    observations: Tensor
    """(R, N, *obs_shape) as the env returned them (the policy normalizes)."""
    actions: Tensor
    """(R, N, *act_shape), `PolicyStep.action`."""
    rewards: Tensor
    """(R, N) float32."""
    terminated: Tensor
    """(R, N) bool: the episode ended in a terminal state at this step (no bootstrap)."""
    truncated: Tensor
    """(R, N) bool: the episode was cut off (time limit) at this step (bootstrap)."""
    episode_start: Tensor
    """(R, N) bool: observations[t] is the first observation of an episode."""
    info: dict[str, Tensor]
    """(R, N, ...) per-step `PolicyStep.info` entries (log_prob, value, ...), memory excluded."""
    memory: dict[str, Tensor]
    """(C, ...) the policy's memory at each chunk's first step (names without the prefix)."""
    chunk_index: Tensor
    """(C, T) int64 flat step index t * N + env, -1 on padding."""
    chunk_mask: Tensor
    """(C, T) bool, False on padding."""
    chunk_env: Tensor
    """(C,) env of each chunk."""
    chunk_first: Tensor
    """(C,) first step of each chunk."""
    chunk_length: Tensor
    """(C,) real steps in each chunk."""
    bootstrap_observations: Tensor
    """(C, *obs_shape): the observation to bootstrap from after each chunk's last step (valid
    where `bootstrap_mask`, zeros elsewhere)."""
    bootstrap_mask: Tensor
    """(C,) bool: the chunk ends in a truncation or at the rollout's end of a running episode."""

    @property
    def num_steps(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def num_envs(self) -> int:
        return int(self.rewards.shape[1])

    @property
    def num_chunks(self) -> int:
        return int(self.chunk_index.shape[0])

    @property
    def chunk_len(self) -> int:
        return int(self.chunk_index.shape[1])

    def chunked(self, values: Tensor, chunks: Tensor | None = None) -> Tensor:
        """(R, N, ...) per-step values -> (C, T, ...) per chunk (or the chunks `chunks`),
        zeros on padding."""
        index = self.chunk_index if chunks is None else self.chunk_index[chunks]
        flat = values.reshape(self.num_steps * self.num_envs, *values.shape[2:])
        out = flat[index.clamp(min=0)]  # (C, T, ...)
        valid = (index >= 0).view(*index.shape, *([1] * (out.dim() - 2)))
        return torch.where(valid, out, torch.zeros_like(out))

    def unchunked(self, values: Tensor) -> Tensor:
        """(C, T) per-chunk values (all chunks) -> (R, N) per step."""
        out = values.new_zeros(self.num_steps * self.num_envs)
        out[self.chunk_index[self.chunk_mask]] = values[self.chunk_mask]
        return out.view(self.num_steps, self.num_envs)

    def chunk_memory(self, chunks: Tensor | None = None) -> dict[str, Tensor]:
        """The stored memory rows of all chunks (or of `chunks`)."""
        if chunks is None:
            return dict(self.memory)
        return {key: value[chunks] for key, value in self.memory.items()}

    def last_step_of_chunks(self) -> Tensor:
        """(C,) flat step index of each chunk's last real step."""
        rows = torch.arange(self.num_chunks)
        return self.chunk_index[rows, self.chunk_length - 1]

    def to(self, device: torch.device | str) -> Rollout:
        moved: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                moved[f.name] = {k: v.to(device) for k, v in value.items()}
            else:
                moved[f.name] = value.to(device)
        return Rollout(**moved)


class RolloutBuffer:
    """Collects N envs x R steps; `finish` returns a `Rollout`. Reused across rollouts.

    Args:
        num_envs: N.
        steps: R, steps per env per rollout.
        chunk_len: T, the longest chunk (the truncated-backpropagation length).
    """

    def __init__(self, num_envs: int, steps: int, chunk_len: int) -> None:
        for name, value in (("num_envs", num_envs), ("steps", steps), ("chunk_len", chunk_len)):
            if value < 1:
                raise ValueError(f"RolloutBuffer: {name} must be >= 1, got {value}")
        self.num_envs, self.steps, self.chunk_len = num_envs, steps, chunk_len
        self.t = 0
        self._next_start = np.ones(num_envs, dtype=bool)  # a fresh buffer starts episodes
        self._since_chunk = np.zeros(num_envs, dtype=np.int64)
        self._arrays: dict[str, np.ndarray] = {}
        self._info: dict[str, Tensor] = {}
        self._memory: dict[str, list[Tensor]] = {}
        self._bootstrap: dict[tuple[int, int], np.ndarray] = {}

    def new_episodes(self, done: np.ndarray | None = None) -> None:
        """Mark the next step of the envs where `done` (None: all) as an episode's first step
        (use after resetting envs outside the autoreset path, e.g. when a run starts)."""
        self._next_start |= np.ones(self.num_envs, bool) if done is None else np.asarray(done)

    def _allocate(self, name: str, row: np.ndarray) -> np.ndarray:
        if name not in self._arrays:
            shape = (self.steps, self.num_envs, *row.shape[1:])
            self._arrays[name] = np.zeros(shape, dtype=row.dtype)
        return self._arrays[name]

    def add(
        self,
        obs: np.ndarray,
        step: PolicyStep,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        final_obs: np.ndarray | None = None,
    ) -> None:
        """Record one step of every env: `obs` (N, *obs_shape) the policy acted on, its
        `PolicyStep`, and what the env returned. `final_obs` (N, *obs_shape) holds the true last
        observation of the envs that finished (needed where `truncated`)."""
        if self.t >= self.steps:
            raise RuntimeError(f"RolloutBuffer is full ({self.steps} steps); call finish() first")
        t = self.t
        obs = np.asarray(obs)
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        chunk_start = self._next_start | (self._since_chunk >= self.chunk_len) | (t == 0)
        self._since_chunk = np.where(chunk_start, 1, self._since_chunk + 1)
        columns = {
            "observations": obs,
            "actions": step.action.detach().cpu().numpy(),
            "rewards": np.asarray(reward, dtype=np.float32),
            "terminated": terminated,
            "truncated": truncated,
            "episode_start": self._next_start.copy(),
            "chunk_start": chunk_start,
        }
        for name, value in columns.items():
            self._allocate(name, value)[t] = value
        rows = torch.as_tensor(np.flatnonzero(chunk_start))
        for key, value in step.info.items():
            if key.startswith(MEMORY_PREFIX):
                self._memory.setdefault(key[len(MEMORY_PREFIX) :], []).append(
                    value.detach()[rows.to(value.device)].cpu()
                )
                continue
            if key not in self._info:
                shape = (self.steps, *value.shape)
                self._info[key] = torch.zeros(shape, dtype=value.dtype)
            self._info[key][t] = value.detach().cpu()
        for env in np.flatnonzero(truncated):
            if final_obs is None:
                raise ValueError("RolloutBuffer.add: an env was truncated but final_obs is None")
            self._bootstrap[(t, int(env))] = np.array(final_obs[env])
        self._next_start = terminated | truncated
        self.t += 1

    def finish(self, next_obs: np.ndarray) -> Rollout:
        """Close the rollout; `next_obs` (N, *obs_shape) is what the envs show now (the
        bootstrap observation of episodes still running). Returns the `Rollout`."""
        if self.t != self.steps:
            raise RuntimeError(f"RolloutBuffer.finish after {self.t} of {self.steps} steps")
        arrays = self._arrays
        done = arrays["terminated"][-1] | arrays["truncated"][-1]
        for env in np.flatnonzero(~done):
            self._bootstrap[(self.steps - 1, int(env))] = np.array(next_obs[env])
        index, env_of, first, length = _chunk_layout(arrays["chunk_start"], self.chunk_len)
        last = first + length - 1
        bootstrap_obs = np.zeros((len(first), *arrays["observations"].shape[2:]), np.float32)
        bootstrap_mask = np.zeros(len(first), dtype=bool)
        for c, (t, env) in enumerate(zip(last, env_of)):
            row = self._bootstrap.get((int(t), int(env)))
            if row is not None:
                bootstrap_obs[c], bootstrap_mask[c] = row, True
        memory = {key: torch.cat(parts) for key, parts in self._memory.items()}
        rollout = Rollout(
            observations=_to_tensor(arrays["observations"].copy()),
            actions=_to_tensor(arrays["actions"].copy()),
            rewards=_to_tensor(arrays["rewards"].copy()),
            terminated=_to_tensor(arrays["terminated"].copy()),
            truncated=_to_tensor(arrays["truncated"].copy()),
            episode_start=_to_tensor(arrays["episode_start"].copy()),
            info={key: value.clone() for key, value in self._info.items()},
            memory=memory,
            chunk_index=torch.from_numpy(index),
            chunk_mask=torch.from_numpy(index >= 0),
            chunk_env=torch.from_numpy(env_of),
            chunk_first=torch.from_numpy(first),
            chunk_length=torch.from_numpy(length),
            bootstrap_observations=torch.from_numpy(bootstrap_obs),
            bootstrap_mask=torch.from_numpy(bootstrap_mask),
        )
        self.t = 0
        self._memory, self._bootstrap = {}, {}
        return rollout
