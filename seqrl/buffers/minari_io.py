"""Minari datasets <-> `EpisodeStore`, through the public `minari` API.

Datasets are found where Minari looks for them: `$MINARI_DATASETS_PATH` if set, else
`~/.minari/datasets`. seqrl never downloads: a dataset id that is not present locally fails at
once with a `FileNotFoundError` that says how to get it (`minari download ID` when online) and
where to put it when offline. Only Box / Discrete observation and action spaces are supported;
per-step `infos` are not loaded.

Writing uses `minari.create_dataset_from_buffers` (which needs only `minari[hdf5]`, not JAX),
with JPEG encoding off so that image observations round-trip exactly, and adds the store's
`ref_min_score` / `ref_max_score` to the metadata so `minari.get_normalized_score` works.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from seqrl.buffers.episode_store import EpisodeStore, StoreMetadata
from seqrl.buffers.validation import data_error

_DATASET_ID = re.compile(r"^(?:[-_\w][-_\w/]*[-_\w]+/)?[-_\w]+?-v\d+$")
_SUPPORTED_SPACES = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete,
                     gym.spaces.MultiBinary)  # fmt: skip


def minari_root() -> Path:
    """The local Minari root: `$MINARI_DATASETS_PATH`, else `~/.minari/datasets`."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path.home() / ".minari" / "datasets"


def list_minari_ids(root: str | Path | None = None) -> list[str]:
    """Ids of the Minari datasets under `root` (default: `minari_root()`), sorted."""
    base = Path(root) if root is not None else minari_root()
    if not base.is_dir():
        return []
    ids = [
        meta.parent.parent.relative_to(base).as_posix()
        for meta in base.rglob("data/metadata.json")
        if not any(part.startswith(".") for part in meta.relative_to(base).parts)
    ]
    return sorted(ids)


def resolve_minari_path(dataset_id_or_path: str | Path) -> Path:
    """The `data` directory of a Minari dataset given by id (local root) or by path.

    Raises `FileNotFoundError` at once, with instructions, when it is not there.
    """
    candidate = Path(dataset_id_or_path).expanduser()
    if candidate.exists():
        for data_dir in (candidate / "data", candidate):
            if (data_dir / "metadata.json").is_file():
                return data_dir
        raise FileNotFoundError(
            f"{candidate}: not a Minari dataset directory (no data/metadata.json inside). Fix: "
            "pass the dataset's folder (the one holding data/main_data.hdf5) or its Minari id"
        )
    dataset_id = str(dataset_id_or_path)
    if not _DATASET_ID.match(dataset_id):
        raise FileNotFoundError(
            f"{dataset_id!r} is neither an existing path nor a Minari dataset id. Fix: pass a "
            "path to a dataset folder, or an id of the form namespace/name-v0 "
            "(e.g. 'mujoco/hopper/medium-v0')"
        )
    root = minari_root()
    data_dir = root / dataset_id / "data"
    if (data_dir / "metadata.json").is_file():
        return data_dir
    local = list_minari_ids(root)
    shown = ", ".join(local[:10]) + (" ..." if len(local) > 10 else "") if local else "none"
    raise FileNotFoundError(
        f"Minari dataset {dataset_id!r} is not in the local Minari root {root} "
        f"(MINARI_DATASETS_PATH={os.environ.get('MINARI_DATASETS_PATH', '<unset>')}; "
        f"datasets found there: {shown}). seqrl never downloads. Fix: when online, run "
        f"`minari download {dataset_id}` (it stores into that root); offline, copy the "
        f"dataset's folder so that {data_dir / 'main_data.hdf5'} exists, or point "
        "MINARI_DATASETS_PATH at the folder that already holds it"
    )


def load_minari(dataset_id_or_path: str | Path) -> EpisodeStore:
    """Load a Minari dataset, by id from the local root or by directory path, into a store."""
    import minari

    data_dir = resolve_minari_path(dataset_id_or_path)
    source = str(data_dir.parent)
    try:
        dataset = minari.MinariDataset(data_dir)
    except Exception as exc:  # minari raises ValueError/AssertionError/KeyError on bad metadata
        raise ValueError(
            f"{source}: Minari could not open the dataset ({type(exc).__name__}: {exc}). Fix: "
            "check data/metadata.json and that the installed minari supports this dataset's "
            "minari_version"
        ) from exc
    obs_space, act_space = dataset.observation_space, dataset.action_space
    for name, space in (("observations", obs_space), ("actions", act_space)):
        if not isinstance(space, _SUPPORTED_SPACES):
            raise data_error(
                source,
                name,
                None,
                f"{type(space).__name__} space is not supported (Box, Discrete, MultiDiscrete, "
                "MultiBinary are)",
                "record the dataset with flattened spaces (gymnasium.wrappers.FlattenObservation)",
            )
    raw_meta = dataset.storage.metadata
    env_spec = dataset.spec.env_spec
    metadata = StoreMetadata(
        env_id=env_spec.id if env_spec is not None else None,
        dataset_id=dataset.id,
        ref_min_score=_optional_float(raw_meta.get("ref_min_score")),
        ref_max_score=_optional_float(raw_meta.get("ref_max_score")),
        observation_space=obs_space,
        action_space=act_space,
        source=source,
        extra={
            k: raw_meta[k]
            for k in ("algorithm_name", "description", "minari_version")
            if k in raw_meta
        },
    )
    episodes = [
        {
            "observations": ep.observations,  # (T + 1, *obs_shape): last row is the final obs
            "actions": ep.actions,
            "rewards": ep.rewards,
            "terminations": ep.terminations,
            "truncations": ep.truncations,
        }
        for ep in dataset.iterate_episodes()
    ]
    if not episodes:
        raise data_error(source, "episodes", None, "the dataset has no episodes",
                         "record at least one episode")  # fmt: skip
    return EpisodeStore.from_episodes(episodes, metadata)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def infer_spaces(store: EpisodeStore) -> tuple[gym.Space, gym.Space]:
    """The store's spaces from its metadata, or unbounded Box / Discrete spaces fitted to data."""

    def fit(data: np.ndarray, extra: np.ndarray | None) -> gym.Space:
        if np.issubdtype(data.dtype, np.integer) and data.ndim == 1:
            high = max(int(data.max()), int(extra.max()) if extra is not None else 0)
            return gym.spaces.Discrete(high + 1)
        if np.issubdtype(data.dtype, np.integer):
            info = np.iinfo(data.dtype)
            return gym.spaces.Box(info.min, info.max, shape=data.shape[1:], dtype=data.dtype)
        if data.dtype == np.bool_:
            return gym.spaces.Box(0, 1, shape=data.shape[1:], dtype=np.bool_)
        return gym.spaces.Box(-np.inf, np.inf, shape=data.shape[1:], dtype=data.dtype)

    meta = store.metadata
    obs_space = meta.observation_space or fit(store.observations, store.final_observations)
    act_space = meta.action_space or fit(store.actions, None)
    return obs_space, act_space


def _env_spec(env_id: str | None) -> gym.envs.registration.EnvSpec | None:
    if env_id is None:
        return None
    try:
        return gym.spec(env_id)
    except gym.error.Error:
        return None  # not registered here: write without an env spec rather than fail


def resolve_output_id(
    dataset_id: str, overwrite: bool = False, root: str | Path | None = None
) -> str:
    """Check that `dataset_id` is a valid Minari id that may be written; returns it.

    Raises before any work is done: a malformed id is a `ValueError`, an existing dataset (under
    `root`, default `minari_root()`) a `FileExistsError` unless `overwrite`.
    """
    if not _DATASET_ID.match(dataset_id):
        raise ValueError(
            f"{dataset_id!r} is not a valid Minari dataset id. Fix: use namespace/name-vN, e.g. "
            "'seqrl/pendulum/random-v0' (or a path ending in .hdf5 for D4RL layout)"
        )
    target = (Path(root) if root is not None else minari_root()) / dataset_id
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"Minari dataset {dataset_id!r} already exists at {target}. Fix: choose another "
            "id or version, or pass overwrite=True (--overwrite) to replace it"
        )
    return dataset_id


@contextmanager
def _minari_root_set_to(root: str | Path | None) -> Iterator[None]:
    """Point Minari (which reads $MINARI_DATASETS_PATH at every call) at `root` for a while."""
    if root is None:
        yield
        return
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def write_minari(
    store: EpisodeStore,
    dataset_id: str,
    *,
    overwrite: bool = False,
    algorithm_name: str | None = None,
    description: str | None = None,
    author: str | None = None,
    root: str | Path | None = None,
) -> Path:
    """Write `store` as Minari dataset `dataset_id` under `root`; returns its folder.

    `root` defaults to the local Minari root, `minari_root()`. Every array (observations plus the
    final one, actions, rewards, flags) is written with its dtype unchanged. An existing dataset
    is an error unless `overwrite=True`.
    """
    with _minari_root_set_to(root):
        return _write_minari(store, dataset_id, overwrite, algorithm_name, description, author)


def _write_minari(
    store: EpisodeStore,
    dataset_id: str,
    overwrite: bool,
    algorithm_name: str | None,
    description: str | None,
    author: str | None,
) -> Path:
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    resolve_output_id(dataset_id, overwrite)
    target = minari_root() / dataset_id
    if target.exists():
        minari.delete_dataset(dataset_id)
    obs_space, act_space = infer_spaces(store)
    offsets = store.episode_offsets
    buffers = []
    for e in range(store.num_episodes):
        lo, hi = offsets[e], offsets[e + 1]
        observations = np.concatenate(
            [store.observations[lo:hi], store.final_observations[e : e + 1]]
        )  # (T + 1, *obs_shape)
        buffers.append(
            EpisodeBuffer(
                id=e,
                observations=observations,
                actions=store.actions[lo:hi],
                rewards=store.rewards[lo:hi],
                terminations=store.terminations[lo:hi],
                truncations=store.truncations[lo:hi],
            )
        )
    meta = store.metadata
    with warnings.catch_warnings():
        # minari warns for every unset optional field (author, permalink, eval env, ...)
        warnings.simplefilter("ignore", UserWarning)
        dataset = minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=_env_spec(meta.env_id),
            observation_space=obs_space,
            action_space=act_space,
            algorithm_name=algorithm_name or meta.extra.get("algorithm_name"),
            author=author,
            description=description or meta.extra.get("description"),
            jpeg_encoding=False,
        )
    extra: dict[str, Any] = {}
    if meta.ref_min_score is not None and meta.ref_max_score is not None:
        extra.update(ref_min_score=meta.ref_min_score, ref_max_score=meta.ref_max_score)
    if extra:
        dataset.storage.update_metadata(extra)
    return target
