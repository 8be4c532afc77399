"""Checks that reject bad offline data with an error a user can act on.

Every error names the source (file, directory or dataset id), the field, the episode (when one is
at fault), what was expected and found, and the fix. Loaders and `EpisodeStore` call these; none
of them truncates, pads or drops data silently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import gymnasium as gym


def data_error(source: str, field: str, episode: int | None, problem: str, fix: str) -> ValueError:
    """A `ValueError` in seqrl's one format: `source: field 'x', episode 3: problem. Fix: ...`."""
    where = f"field '{field}'" + (f", episode {episode}" if episode is not None else "")
    return ValueError(f"{source}: {where}: {problem}. Fix: {fix}.")


def episode_of_step(offsets: np.ndarray | None, step: int) -> int | None:
    """The episode that flat step index `step` belongs to (None without offsets)."""
    if offsets is None:
        return None
    return int(np.searchsorted(offsets, step, side="right") - 1)


def check_finite(values: np.ndarray, source: str, field: str, offsets: np.ndarray | None) -> None:
    """Reject NaN / inf in a float array (N, ...); integer arrays pass trivially.

    With `offsets` the error names the episode and the step within it; without them (arrays
    that have one row per episode), the row.
    """
    if not np.issubdtype(values.dtype, np.floating) or values.size == 0:
        return
    finite = np.isfinite(values)
    if finite.all():
        return
    row = int(np.flatnonzero(~finite.reshape(len(values), -1).all(axis=1))[0])
    bad = values[row]
    episode = episode_of_step(offsets, row)
    where = (
        f"step {row - int(offsets[episode])} of the episode (row {row})"
        if offsets is not None and episode is not None
        else f"row {row}"
    )
    raise data_error(
        source,
        field,
        episode if offsets is not None else row,
        f"non-finite value {bad[~np.isfinite(bad)].ravel()[0] if np.ndim(bad) else bad} at {where}",
        "remove or repair the episodes with NaN/inf (e.g. diverged simulations) before loading",
    )


def check_flags(
    terminations: np.ndarray, truncations: np.ndarray, offsets: np.ndarray, source: str
) -> None:
    """Every episode ends with a termination or truncation flag, and has none before its end."""
    ends = offsets[1:] - 1  # (E,)
    flagged = terminations | truncations  # (N,)
    unflagged_ends = np.flatnonzero(~flagged[ends])
    if len(unflagged_ends):
        e = int(unflagged_ends[0])
        raise data_error(
            source,
            "terminations/truncations",
            e,
            f"the episode's last step ({int(ends[e])}) is neither terminated nor truncated, so it "
            f"is incomplete ({len(unflagged_ends)} episode(s) like this)",
            "if the recording really stopped there, mark the step as a truncation (the D4RL "
            "loader does this with incomplete_last_episode='truncate') or drop the episode",
        )
    is_end = np.zeros(len(flagged), dtype=bool)
    is_end[ends] = True
    early = np.flatnonzero(flagged & ~is_end)
    if len(early):
        step = int(early[0])
        e = episode_of_step(offsets, step)
        raise data_error(
            source,
            "terminations" if terminations[step] else "truncations",
            e,
            f"flag set at step {step - int(offsets[e])}, before the episode's last step "
            f"({int(offsets[e + 1] - offsets[e]) - 1})",
            "split the episode at that step or clear the flag",
        )


def _space_problem(data: np.ndarray, space: gym.Space) -> str | None:
    """Why `data` (N, ...) does not fit `space`, or None if it does."""
    # Imported here: the samplers import this module, and they must not pull in gymnasium.
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        if data.ndim != 1 or not np.issubdtype(data.dtype, np.integer):
            return (
                f"expected integers of shape (N,) for {space}, got dtype {data.dtype}, "
                f"shape {data.shape}"
            )
        lo, hi = int(space.start), int(space.start + space.n)
        if data.size and (data.min() < lo or data.max() >= hi):
            return f"values in [{data.min()}, {data.max()}] outside {space}"
        return None
    if isinstance(space, (gym.spaces.Box, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
        if tuple(data.shape[1:]) != tuple(space.shape):
            return f"per-step shape {tuple(data.shape[1:])} does not match {space}"
        return None
    return (
        f"{type(space).__name__} spaces are not supported (only Box, Discrete, MultiDiscrete, "
        "MultiBinary)"
    )


def check_matches_spaces(
    observations: np.ndarray,
    actions: np.ndarray,
    observation_space: gym.Space | None,
    action_space: gym.Space | None,
    source: str,
    env_name: str | None,
) -> None:
    """Reject observations / actions whose shape or type does not fit the (env's) spaces."""
    env = f"env {env_name!r}" if env_name else "the environment"
    for name, data, space in (
        ("observations", observations, observation_space),
        ("actions", actions, action_space),
    ):
        if space is None:
            continue
        problem = _space_problem(data, space)
        if problem is not None:
            fix = (
                "flatten the space (gymnasium.wrappers.FlattenObservation) when recording"
                if "not supported" in problem
                else f"use a dataset recorded in {env}, or the env this dataset was recorded in"
            )
            raise data_error(source, name, None, f"{problem} ({env})", fix)


def actions_outside_bounds(
    actions: np.ndarray, low: tuple[float, ...] | None, high: tuple[float, ...] | None
) -> int:
    """How many steps of `actions` (N, A) have a dimension outside the Box bounds [low, high]
    (0 without bounds or for discrete actions): a warning, not an error, since recorded actions
    are sometimes the unclipped ones."""
    if low is None or high is None or not np.issubdtype(actions.dtype, np.floating):
        return 0
    flat = actions.reshape(len(actions), -1)  # (N, A)
    outside = (flat < np.asarray(low)) | (flat > np.asarray(high))
    return int(outside.any(axis=1).sum())
