"""D4RL's HDF5 layout <-> `EpisodeStore`, and `load_d4rl` when the `d4rl` package exists.

D4RL keeps one flat array per field: `observations` (N, obs_dim), `actions` (N, act_dim),
`rewards` (N,), `terminals` (N,), `timeouts` (N,) and optionally `next_observations`. Episodes are
split after every step where `terminals` or `timeouts` is set; the timeout step itself is kept,
as a truncation (`truncations` = `timeouts`, `terminations` = `terminals`).

The final observation of an episode is `next_observations` at its last step. Files without
`next_observations` do not record it; the store then repeats the episode's last observation and
says so in `metadata.extra["final_observations"]` (only bootstrapping from a truncated episode's
last step reads it). Within an episode `next_observations[t]` must equal `observations[t + 1]`;
a file where it does not is rejected rather than half-used.

A dataset that stops in the middle of an episode (no flag on its last step, common in D4RL files
capped at 1M steps) is an error by default: choose `incomplete_last_episode="truncate"` (keep it,
flagged as a truncation) or `"drop"` (leave those steps out; the count goes to the metadata).
Either way `metadata.extra["last_episode"]` says what was done. `seqrl train` defaults to
"truncate" and prints that line (`--dataset-tail truncate|drop|error`).

`write_d4rl_hdf5` writes the same layout, always with `next_observations`, plus a `metadata`
group (env id, dataset id, reference scores) that `load_d4rl_hdf5` reads back.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from seqrl.buffers.episode_store import EpisodeStore, StoreMetadata
from seqrl.buffers.validation import data_error, episode_of_step
from seqrl.checkpoint import current_umask

COMPRESSION: dict[str, Any] = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
"""Lossless: gzip with byte shuffling roughly halves float arrays on disk."""

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
OPTIONAL_KEYS = ("next_observations",)
_METADATA_FIELDS = ("env_id", "dataset_id", "ref_min_score", "ref_max_score")
IncompletePolicy = Literal["error", "truncate", "drop"]


def store_from_d4rl_arrays(
    arrays: dict[str, np.ndarray],
    metadata: StoreMetadata,
    incomplete_last_episode: IncompletePolicy = "error",
) -> EpisodeStore:
    """Split D4RL's flat arrays into episodes (see the module docstring) and build a store."""
    src = metadata.source
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise data_error(
            src,
            missing[0],
            None,
            f"missing key(s) {missing}; the file has {sorted(arrays)}",
            "D4RL layout needs observations, actions, rewards, terminals, timeouts (add "
            "timeouts = zeros(N, bool) if the data has no time limits)",
        )
    data = {k: np.asarray(arrays[k]) for k in REQUIRED_KEYS + OPTIONAL_KEYS if k in arrays}
    num_steps = len(data["observations"])
    if num_steps == 0:
        raise data_error(src, "observations", None, "the dataset is empty", "record some data")
    for key, value in data.items():
        if len(value) != num_steps:
            raise data_error(
                src,
                key,
                None,
                f"ragged arrays: {len(value)} rows but observations has {num_steps}",
                "every D4RL field needs one row per step; re-export the file",
            )
    if data["rewards"].ndim == 2 and data["rewards"].shape[1] == 1:
        data["rewards"] = data["rewards"][:, 0]  # some files store rewards as (N, 1)
    terminals = _flags(data["terminals"], src, "terminals")
    timeouts = _flags(data["timeouts"], src, "timeouts").copy()
    if not (terminals[-1] or timeouts[-1]):
        last_end = np.flatnonzero(terminals | timeouts)
        tail = num_steps - (int(last_end[-1]) + 1 if len(last_end) else 0)
        if incomplete_last_episode == "truncate":
            timeouts[-1] = True
            metadata.extra["last_episode"] = (
                f"the last {tail} step(s) carry no end flag: kept as a truncated episode"
            )
        elif incomplete_last_episode == "drop" and tail == num_steps:
            raise data_error(
                src,
                "terminals/timeouts",
                None,
                "no step carries a terminal or "
                "timeout flag, so dropping the incomplete episode leaves nothing",
                "check that terminals/timeouts are filled in",
            )
        elif incomplete_last_episode == "drop":
            keep = num_steps - tail
            data = {k: v[:keep] for k, v in data.items()}
            terminals, timeouts, num_steps = terminals[:keep], timeouts[:keep], keep
            metadata.extra["dropped_steps"] = tail
            metadata.extra["last_episode"] = f"the last {tail} step(s) carry no end flag: dropped"
        else:
            raise data_error(
                src,
                "terminals/timeouts",
                len(last_end),
                f"the data ends in the middle of an episode: its last {tail} step(s) carry no "
                "terminal or timeout flag",
                "train with --dataset-tail truncate to keep them as a truncated episode, or "
                "--dataset-tail drop to leave them out (in Python: incomplete_last_episode='truncate' or 'drop')",
            )
    ends = np.flatnonzero(terminals | timeouts)  # (E,) last step of each episode
    offsets = np.concatenate([[0], ends + 1]).astype(np.int64)  # (E + 1,)
    observations = data["observations"]
    if "next_observations" in data:
        next_obs = data["next_observations"]
        _check_next_observations(observations, next_obs, offsets, src)
        final_observations = next_obs[ends]  # (E, *obs_shape)
    else:
        final_observations = observations[ends].copy()
        metadata.extra["final_observations"] = "repeated last observation (no next_observations)"
    return EpisodeStore(
        observations=observations,
        actions=data["actions"],
        rewards=data["rewards"],
        terminations=terminals,
        truncations=timeouts,
        final_observations=final_observations,
        episode_offsets=offsets,
        metadata=metadata,
    )


def _flags(values: np.ndarray, source: str, name: str) -> np.ndarray:
    if values.ndim != 1:
        raise data_error(source, name, None, f"shape {values.shape}, expected (N,)",
                         "store one flag per step")  # fmt: skip
    if values.dtype != np.bool_:
        bad = np.flatnonzero((values != 0) & (values != 1))
        if len(bad):
            raise data_error(
                source, name, None, f"value {values[bad[0]].item()!r} at row {int(bad[0])} is not 0/1",
                "store flags as booleans",
            )  # fmt: skip
    return values.astype(np.bool_)


def _check_next_observations(
    observations: np.ndarray, next_obs: np.ndarray, offsets: np.ndarray, source: str
) -> None:
    if next_obs.shape != observations.shape:
        raise data_error(
            source,
            "next_observations",
            None,
            f"shape {next_obs.shape} differs from observations {observations.shape}",
            "re-export the file with matching arrays, or delete next_observations",
        )
    within = np.ones(len(observations), dtype=bool)  # (N,) steps whose successor is in-episode
    within[offsets[1:] - 1] = False
    rows = np.flatnonzero(within)
    same = next_obs[rows] == observations[rows + 1]
    same = same.reshape(len(rows), -1).all(axis=1)
    if not same.all():
        row = int(rows[np.flatnonzero(~same)[0]])
        e = episode_of_step(offsets, row)
        raise data_error(
            source,
            "next_observations",
            e,
            f"next_observations[{row}] differs from observations[{row + 1}] inside the episode "
            f"(step {row - int(offsets[e])}), so the file's episodes are not contiguous",
            "check the terminals/timeouts flags; if the file is right, delete next_observations "
            "from a copy of it (the final observations are then the last ones repeated)",
        )


def load_d4rl_hdf5(
    path: str | Path,
    *,
    env_id: str | None = None,
    dataset_id: str | None = None,
    incomplete_last_episode: IncompletePolicy = "error",
) -> EpisodeStore:
    """Load a D4RL-layout HDF5 file. `env_id` / `dataset_id` override what the file says.

    With an explicit `env_id` (a registered Gymnasium id) the data are also checked against that
    env's observation and action spaces, and the spaces are kept in the metadata.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file. Fix: pass the path of a D4RL-layout .hdf5 file (for Minari "
            "datasets use load_minari)"
        )
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc}). Fix: check the path") from exc
    with handle:
        arrays = {k: handle[k][()] for k in REQUIRED_KEYS + OPTIONAL_KEYS if k in handle}
        ignored = sorted(set(handle.keys()) - set(arrays) - {"metadata"})
        file_meta = _read_metadata(handle)
    observation_space = action_space = None
    if env_id is not None:
        import gymnasium as gym

        env = gym.make(env_id)
        observation_space, action_space = env.observation_space, env.action_space
        env.close()
    metadata = StoreMetadata(
        env_id=env_id or file_meta.pop("env_id", None),
        observation_space=observation_space,
        action_space=action_space,
        dataset_id=dataset_id or file_meta.pop("dataset_id", None) or path.stem,
        ref_min_score=file_meta.pop("ref_min_score", None),
        ref_max_score=file_meta.pop("ref_max_score", None),
        source=str(path),
        extra={**file_meta, **({"ignored_keys": ignored} if ignored else {})},
    )
    return store_from_d4rl_arrays(arrays, metadata, incomplete_last_episode)


def _read_metadata(handle: h5py.File) -> dict[str, Any]:
    """Scalars under the file's `metadata` group (D4RL has `metadata/algorithm`, seqrl more)."""
    out: dict[str, Any] = {}
    group = handle.get("metadata")
    if not isinstance(group, h5py.Group):
        return out
    for key, item in group.items():
        if isinstance(item, h5py.Dataset) and item.shape == ():
            value = item[()]
            out[key] = value.decode() if isinstance(value, bytes) else value
    for key in ("ref_min_score", "ref_max_score"):
        if key in out:
            out[key] = float(out[key])
    return out


def write_d4rl_hdf5(store: EpisodeStore, path: str | Path, overwrite: bool = False) -> Path:
    """Write `store` in D4RL's layout to `path` (atomically: a temp file, then a rename)."""
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists. Fix: choose another path or pass overwrite=True"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".hdf5.tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("observations", data=store.observations, **COMPRESSION)
            f.create_dataset("next_observations", data=store.next_observations(), **COMPRESSION)
            f.create_dataset("actions", data=store.actions, **COMPRESSION)
            f.create_dataset("rewards", data=store.rewards, **COMPRESSION)
            f.create_dataset("terminals", data=store.terminations, **COMPRESSION)
            f.create_dataset("timeouts", data=store.truncations, **COMPRESSION)
            meta = f.create_group("metadata")
            for key in _METADATA_FIELDS:
                value = getattr(store.metadata, key)
                if value is not None:
                    meta.create_dataset(key, data=value)
            algorithm = store.metadata.extra.get("algorithm") or store.metadata.extra.get(
                "algorithm_name"
            )
            if algorithm is not None:
                meta.create_dataset("algorithm", data=str(algorithm))
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_d4rl(name: str, incomplete_last_episode: IncompletePolicy = "error") -> EpisodeStore:
    """Load D4RL dataset `name` (e.g. `hopper-medium-v2`) through the `d4rl` package.

    `d4rl` (old `gym`, `mujoco-py`) is not a seqrl dependency; without it this raises an
    `ImportError` that points to `load_d4rl_hdf5` and Minari's D4RL ports.
    """
    try:
        import d4rl  # type: ignore[import-not-found]
        import gym  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ImportError(
            f"load_d4rl({name!r}) needs the `d4rl` package (and old `gym` + `mujoco-py`), which "
            f"is not importable here ({exc}). Fix: load the dataset's HDF5 file directly with "
            "seqrl.buffers.load_d4rl_hdf5(path) (D4RL keeps downloads in ~/.d4rl/datasets), or "
            "use Minari's port of it, e.g. load_minari('mujoco/hopper/medium-v0') after "
            "`minari download mujoco/hopper/medium-v0`"
        ) from exc
    env = gym.make(name)
    arrays = env.get_dataset()
    ref_min = getattr(d4rl, "infos", None) and d4rl.infos.REF_MIN_SCORE.get(name)
    ref_max = getattr(d4rl, "infos", None) and d4rl.infos.REF_MAX_SCORE.get(name)
    metadata = StoreMetadata(
        env_id=None,  # a D4RL env id is an old-gym id, not a Gymnasium one
        dataset_id=name,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        source=f"d4rl:{name}",
        extra={"d4rl_env_id": name},
    )
    return store_from_d4rl_arrays(arrays, metadata, incomplete_last_episode)
