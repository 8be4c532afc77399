"""`EpisodeStore`: a whole offline dataset as flat NumPy arrays plus episode offsets.

Every loader (Minari, D4RL HDF5, arrays) builds one, every sampler reads one. Layout, with N the
total number of steps and E the number of episodes:

    observations        (N, *obs_shape)   the observation each action was taken in
    actions             (N, *act_shape)   float for Box actions, integer for Discrete ones
    rewards             (N,)
    terminations        (N,) bool         True on the last step of an episode that terminated
    truncations         (N,) bool         True on the last step of an episode that was cut off
    final_observations  (E, *obs_shape)   the observation each episode ended in (after its last
                                          action): needed to bootstrap truncated episodes
    episode_offsets     (E + 1,) int64    episode e is steps [offsets[e], offsets[e + 1])

Arrays keep the dtype they were loaded with, so writing a store back out reproduces the source
exactly; samplers convert to float32 / int64 while they gather a batch. The store is validated on
construction: empty data, ragged arrays, NaN/inf and episodes without an end flag are rejected
with a `ValueError` naming the source, the field, the episode and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from seqrl.buffers.validation import (
    check_finite,
    check_flags,
    check_matches_spaces,
    data_error,
    episode_of_step,
)

if TYPE_CHECKING:  # only for annotations: gymnasium and torch (via core) are slow to import
    import gymnasium as gym

    from seqrl.core import DataStats

OBS_STD_FLOOR = 1e-6
"""`observation_std` is at least this, so constant observation dimensions do not divide by 0."""

EPISODE_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")


@dataclass
class StoreMetadata:
    """What a dataset is about: its env, its name, its reference scores, its spaces."""

    env_id: str | None = None
    """Gymnasium id of the env the data was recorded in, e.g. `Hopper-v5`."""
    dataset_id: str | None = None
    """Minari id or file name the data was loaded from / will be written as."""
    ref_min_score: float | None = None
    """Return that maps to normalized score 0 (random policy); see `seqrl.envs.scores`."""
    ref_max_score: float | None = None
    """Return that maps to normalized score 100 (expert policy)."""
    observation_space: gym.Space | None = None
    """The env's observation space, if known; used for shape checks against the env."""
    action_space: gym.Space | None = None
    """The env's action space, if known."""
    source: str = "<arrays>"
    """File, directory or dataset id the data came from; every error message names it."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else a loader wants to carry (algorithm name, description, ...)."""


@dataclass(frozen=True)
class Episode:
    """Views (no copies) of one episode's arrays; T is the episode length."""

    observations: np.ndarray  # (T, *obs_shape)
    actions: np.ndarray  # (T, *act_shape)
    rewards: np.ndarray  # (T,)
    terminations: np.ndarray  # (T,)
    truncations: np.ndarray  # (T,)
    final_observation: np.ndarray  # (*obs_shape)

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))


class EpisodeStore:
    """Episodes as flat arrays plus offsets (see the module docstring for the layout).

    Build one with a loader (`load_dataset`, `load_minari`, `load_d4rl_hdf5`), from per-episode
    dicts (`EpisodeStore.from_episodes`) or from flat arrays (this constructor); write one with
    `seqrl.buffers.save_dataset` (or `write_minari` / `write_d4rl_hdf5`).
    """

    def __init__(
        self,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminations: np.ndarray,
        truncations: np.ndarray,
        final_observations: np.ndarray,
        episode_offsets: np.ndarray,
        metadata: StoreMetadata | None = None,
    ) -> None:
        self.metadata = metadata if metadata is not None else StoreMetadata()
        src = self.metadata.source
        offsets = np.asarray(episode_offsets)
        if offsets.ndim != 1 or len(offsets) < 2 or not np.issubdtype(offsets.dtype, np.integer):
            raise data_error(
                src,
                "episode_offsets",
                None,
                f"expected a 1-D integer array of E + 1 >= 2 offsets, got shape {offsets.shape}, "
                f"dtype {offsets.dtype}",
                "the dataset is empty or was built wrongly; pass offsets [0, len_0, len_0 + "
                "len_1, ..., N]",
            )
        self.episode_offsets = offsets.astype(np.int64)  # (E + 1,)
        self.observations = np.ascontiguousarray(observations)  # (N, *obs_shape)
        self.actions = np.ascontiguousarray(actions)  # (N, *act_shape)
        self.rewards = np.ascontiguousarray(rewards)  # (N,)
        self.terminations = _as_flags(terminations, src, "terminations", offsets)  # (N,)
        self.truncations = _as_flags(truncations, src, "truncations", offsets)  # (N,)
        self.final_observations = np.ascontiguousarray(final_observations)  # (E, *obs_shape)
        self._validate()

    # ----------------------------------------------------------------------------- construction

    @classmethod
    def from_episodes(
        cls, episodes: list[dict[str, Any]], metadata: StoreMetadata | None = None
    ) -> EpisodeStore:
        """Build a store from one dict per episode.

        Each dict holds `actions` (T, ...), `rewards` (T,), `terminations` (T,), `truncations`
        (T,) and either `observations` with T + 1 rows (Minari's layout: the last row is the final
        observation) or `observations` with T rows plus `final_observation`.
        """
        metadata = metadata if metadata is not None else StoreMetadata()
        src = metadata.source
        if len(episodes) == 0:
            raise data_error(
                src, "episodes", None, "no episodes", "record or load at least one episode"
            )
        columns: dict[str, list[np.ndarray]] = {key: [] for key in EPISODE_KEYS}
        finals, lengths = [], []
        for e, episode in enumerate(episodes):
            missing = [k for k in EPISODE_KEYS if k not in episode]
            if missing:
                raise data_error(
                    src,
                    missing[0],
                    e,
                    f"missing key(s) {missing}; present: {sorted(episode)}",
                    f"give every episode the keys {list(EPISODE_KEYS)}",
                )
            length = len(episode["rewards"])
            obs = np.asarray(episode["observations"])
            if "final_observation" in episode:
                final, obs_steps = np.asarray(episode["final_observation"]), obs
            elif len(obs) == length + 1:
                final, obs_steps = obs[-1], obs[:-1]
            else:
                raise data_error(
                    src,
                    "observations",
                    e,
                    f"{len(obs)} observations for {length} rewards and no 'final_observation'",
                    "give T + 1 observations (the last is the final one) or T observations "
                    "plus a 'final_observation' key",
                )
            for key in EPISODE_KEYS:
                value = obs_steps if key == "observations" else np.asarray(episode[key])
                if len(value) != length:
                    raise data_error(
                        src,
                        key,
                        e,
                        f"ragged episode: {len(value)} rows but {length} rewards",
                        "every per-step field of an episode needs one row per step",
                    )
                columns[key].append(value)
            finals.append(final)
            lengths.append(length)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        try:
            flat = {key: np.concatenate(parts) for key, parts in columns.items()}
            final_observations = np.stack(finals)
        except ValueError as exc:
            raise data_error(
                src,
                "observations/actions",
                None,
                f"episodes have different observation or action shapes ({exc})",
                "every episode must come from the same observation and action spaces",
            ) from exc
        return cls(
            **flat,
            final_observations=final_observations,
            episode_offsets=offsets,
            metadata=metadata,
        )

    def _validate(self) -> None:
        src, offsets = self.metadata.source, self.episode_offsets
        num_steps = int(offsets[-1])
        if num_steps == 0:
            raise data_error(src, "rewards", None, "the dataset has no steps", "record more data")
        lengths = np.diff(offsets)
        if offsets[0] != 0 or np.any(lengths <= 0):
            bad = int(np.flatnonzero(lengths <= 0)[0]) if np.any(lengths <= 0) else 0
            raise data_error(
                src,
                "episode_offsets",
                bad,
                f"offsets must start at 0 and strictly increase (episode length "
                f"{int(lengths[bad])})",
                "drop empty episodes before building the store",
            )
        for name in ("observations", "actions", "rewards", "terminations", "truncations"):
            rows = len(getattr(self, name))
            if rows != num_steps:
                raise data_error(
                    src,
                    name,
                    None,
                    f"ragged arrays: {rows} rows, but the episode offsets cover {num_steps} steps",
                    "every per-step field needs exactly one row per step",
                )
        if self.rewards.ndim != 1:
            raise data_error(
                src,
                "rewards",
                None,
                f"shape {self.rewards.shape}, expected (N,)",
                "pass one scalar reward per step",
            )
        if len(self.final_observations) != self.num_episodes or (
            self.final_observations.shape[1:] != self.observations.shape[1:]
        ):
            raise data_error(
                src,
                "final_observations",
                None,
                f"shape {self.final_observations.shape}, expected "
                f"({self.num_episodes}, *{self.observations.shape[1:]})",
                "pass one final observation per episode, shaped like the observations",
            )
        for name in ("observations", "actions", "rewards"):
            check_finite(getattr(self, name), src, name, offsets)
        check_finite(self.final_observations, src, "final_observations", None)
        check_flags(self.terminations, self.truncations, offsets, src)
        if self.metadata.observation_space is not None or self.metadata.action_space is not None:
            self.check_spaces(self.metadata.observation_space, self.metadata.action_space)

    def check_spaces(
        self,
        observation_space: gym.Space | None,
        action_space: gym.Space | None,
        env_name: str | None = None,
    ) -> None:
        """Raise a `ValueError` if the data does not fit these spaces (e.g. the env's)."""
        check_matches_spaces(
            self.observations,
            self.actions,
            observation_space,
            action_space,
            self.metadata.source,
            env_name or self.metadata.env_id,
        )

    # ----------------------------------------------------------------------------- sizes and views

    @property
    def num_episodes(self) -> int:
        return len(self.episode_offsets) - 1

    @property
    def num_steps(self) -> int:
        return int(self.episode_offsets[-1])

    @property
    def observation_shape(self) -> tuple[int, ...]:
        return tuple(self.observations.shape[1:])

    @property
    def action_shape(self) -> tuple[int, ...]:
        return tuple(self.actions.shape[1:])

    @property
    def discrete_actions(self) -> bool:
        """True when actions are integers (a Discrete action space)."""
        return bool(np.issubdtype(self.actions.dtype, np.integer))

    @cached_property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.episode_offsets)  # (E,)

    @cached_property
    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode, float64 (E,)."""
        sums = np.add.reduceat(self.rewards.astype(np.float64), self.episode_offsets[:-1])
        return sums  # (E,)

    @cached_property
    def episode_index(self) -> np.ndarray:
        """The episode each step belongs to (N,) int64."""
        return np.repeat(np.arange(self.num_episodes, dtype=np.int64), self.episode_lengths)

    @cached_property
    def timesteps(self) -> np.ndarray:
        """Each step's index within its episode (N,) int64."""
        return np.arange(self.num_steps, dtype=np.int64) - self.episode_offsets[self.episode_index]

    @cached_property
    def observation_mean(self) -> np.ndarray:
        """Mean over all steps' observations (*obs_shape,) float32, for normalization."""
        return self.observations.mean(axis=0, dtype=np.float64).astype(np.float32)

    @cached_property
    def observation_std(self) -> np.ndarray:
        """Std over all steps' observations, floored at `OBS_STD_FLOOR` (*obs_shape,) float32."""
        std = self.observations.std(axis=0, dtype=np.float64)
        return np.maximum(std, OBS_STD_FLOOR).astype(np.float32)

    def episode(self, index: int) -> Episode:
        """Views of episode `index` (negative indices count from the end)."""
        if not -self.num_episodes <= index < self.num_episodes:
            raise IndexError(f"episode {index} out of range for {self.num_episodes} episodes")
        index %= self.num_episodes
        lo, hi = self.episode_offsets[index], self.episode_offsets[index + 1]
        return Episode(
            self.observations[lo:hi],
            self.actions[lo:hi],
            self.rewards[lo:hi],
            self.terminations[lo:hi],
            self.truncations[lo:hi],
            self.final_observations[index],
        )

    def next_observations(self) -> np.ndarray:
        """The observation after every step (N, *obs_shape): the next row, or the final one."""
        nxt = np.empty_like(self.observations)
        nxt[:-1] = self.observations[1:]
        nxt[self.episode_offsets[1:] - 1] = self.final_observations
        return nxt

    def stats(self) -> DataStats:
        """Ranges and moments of the data, for normalization and for checking a policy's outputs.

        - observation_mean / observation_std (*obs_shape,) float32: the properties of those names
          (std floored at `OBS_STD_FLOOR`);
        - observation_min / observation_max (*obs_shape,): over the same observations, every
          step's (final observations are not counted);
        - action_min / action_max (*act_shape,): per action dimension; None for discrete actions;
        - reward_min / reward_max: over steps; return_min / return_max: over episodes
          (undiscounted returns).

        A plain dict (typed as `seqrl.core.DataStats`); min / max arrays keep the data's dtype;
        scalars are Python floats.
        """
        continuous = not self.discrete_actions
        returns = self.episode_returns
        return {
            "observation_mean": self.observation_mean,
            "observation_std": self.observation_std,
            "observation_min": self.observations.min(axis=0),
            "observation_max": self.observations.max(axis=0),
            "action_min": self.actions.min(axis=0) if continuous else None,
            "action_max": self.actions.max(axis=0) if continuous else None,
            "reward_min": float(self.rewards.min()),
            "reward_max": float(self.rewards.max()),
            "return_min": float(returns.min()),
            "return_max": float(returns.max()),
        }

    def summary(self) -> dict[str, Any]:
        """Sizes, return statistics and reference scores, as plain Python values."""
        returns = self.episode_returns
        meta = self.metadata
        return {
            "dataset_id": meta.dataset_id,
            "env_id": meta.env_id,
            "source": meta.source,
            "episodes": self.num_episodes,
            "steps": self.num_steps,
            "observation_shape": self.observation_shape,
            "action_shape": self.action_shape,
            "discrete_actions": self.discrete_actions,
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "return_min": float(returns.min()),
            "return_max": float(returns.max()),
            "length_mean": float(self.episode_lengths.mean()),
            "terminated_episodes": int(self.terminations[self.episode_offsets[1:] - 1].sum()),
            "ref_min_score": meta.ref_min_score,
            "ref_max_score": meta.ref_max_score,
        }

    def __repr__(self) -> str:
        name = self.metadata.dataset_id or self.metadata.source
        return (
            f"EpisodeStore({name!r}, episodes={self.num_episodes}, steps={self.num_steps}, "
            f"obs={self.observation_shape}, act={self.action_shape})"
        )


def _as_flags(values: np.ndarray, source: str, name: str, offsets: np.ndarray) -> np.ndarray:
    """Termination / truncation flags as bool; 0/1 floats or ints are accepted, others rejected."""
    flags = np.asarray(values)
    if flags.dtype == np.bool_:
        return np.ascontiguousarray(flags)
    bad = np.flatnonzero((flags != 0) & (flags != 1)) if flags.size else []
    if len(bad):
        raise data_error(
            source,
            name,
            episode_of_step(offsets, int(bad[0])),
            f"flag values must be 0/1 or bool, got {flags[bad[0]]!r} at step {int(bad[0])}",
            f"store {name} as booleans",
        )
    return np.ascontiguousarray(flags.astype(np.bool_))
