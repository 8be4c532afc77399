"""Offline data: the episode store, Minari / D4RL readers and writers, and batch samplers.

store = load_dataset("seqrl-bench/hopper/medium-v0")      # Minari id, folder or .hdf5 file
sampler = WindowSampler(store, context_len=20, batch_size=64, seed=0, return_scale=1000)
batch = sampler.sample()                                  # WindowBatch of (B, K, ...) tensors
save_dataset(store, "copy.hdf5")                          # the same forms as load_dataset

The names below are imported on first use (PEP 562), so `import seqrl.buffers.rollout` or
`from seqrl.buffers.samplers import WindowSampler` does not pull in gymnasium, h5py or minari;
only the readers and writers that need them do.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_SOURCES: dict[str, str] = {
    "Episode": "episode_store",
    "EpisodeStore": "episode_store",
    "StoreMetadata": "episode_store",
    "TransitionSampler": "samplers",
    "WindowSampler": "samplers",
    "HDF5_SUFFIXES": "datasets",
    "load_dataset": "datasets",
    "save_dataset": "datasets",
    "load_d4rl": "d4rl_io",
    "load_d4rl_hdf5": "d4rl_io",
    "write_d4rl_hdf5": "d4rl_io",
    "list_minari_ids": "minari_io",
    "load_minari": "minari_io",
    "minari_root": "minari_io",
    "write_minari": "minari_io",
}
"""Exported name -> the module of `seqrl.buffers` that defines it."""

if TYPE_CHECKING:
    from seqrl.buffers.d4rl_io import load_d4rl, load_d4rl_hdf5, write_d4rl_hdf5
    from seqrl.buffers.datasets import HDF5_SUFFIXES, load_dataset, save_dataset
    from seqrl.buffers.episode_store import Episode, EpisodeStore, StoreMetadata
    from seqrl.buffers.minari_io import list_minari_ids, load_minari, minari_root, write_minari
    from seqrl.buffers.samplers import TransitionSampler, WindowSampler


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_SOURCES})


__all__ = [
    "HDF5_SUFFIXES",
    "Episode",
    "EpisodeStore",
    "StoreMetadata",
    "TransitionSampler",
    "WindowSampler",
    "list_minari_ids",
    "load_d4rl",
    "load_d4rl_hdf5",
    "load_dataset",
    "load_minari",
    "minari_root",
    "save_dataset",
    "write_d4rl_hdf5",
    "write_minari",
]
