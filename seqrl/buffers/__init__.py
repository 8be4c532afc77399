"""Offline data: the episode store, Minari / D4RL readers and writers, and batch samplers.

store = load_dataset("seqrl-bench/hopper/medium-v0")      # Minari id, folder or .hdf5 file
sampler = WindowSampler(store, context_len=20, batch_size=64, seed=0, return_scale=1000)
batch = sampler.sample()                                  # WindowBatch of (B, K, ...) tensors
"""

from __future__ import annotations

from pathlib import Path

from seqrl.buffers.d4rl_io import load_d4rl, load_d4rl_hdf5, write_d4rl_hdf5
from seqrl.buffers.episode_store import Episode, EpisodeStore, StoreMetadata
from seqrl.buffers.minari_io import list_minari_ids, load_minari, minari_root, write_minari
from seqrl.buffers.samplers import TransitionSampler, WindowSampler

HDF5_SUFFIXES = (".hdf5", ".h5")


def load_dataset(spec: str | Path) -> EpisodeStore:
    """Load a dataset from whatever names it, so every command takes the same `--dataset`.

    - `path/to/file.hdf5` (or `.h5`): D4RL layout, `load_d4rl_hdf5`;
    - `d4rl:hopper-medium-v2`: through the `d4rl` package, `load_d4rl`;
    - anything else: a Minari dataset folder or a Minari id in the local root, `load_minari`.
    """
    text = str(spec)
    if text.startswith("d4rl:"):
        return load_d4rl(text.removeprefix("d4rl:"))
    if Path(text).suffix.lower() in HDF5_SUFFIXES:
        return load_d4rl_hdf5(text)
    return load_minari(text)


__all__ = [
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
    "write_d4rl_hdf5",
    "write_minari",
]
