"""`load_dataset` / `save_dataset`: one name for a dataset, whatever its format.

Every command takes the same `--dataset` / `--out` text and these two functions pick the reader or
writer from it:

    text                                   load_dataset          save_dataset
    path/to/file.hdf5 (or .h5)             load_d4rl_hdf5        write_d4rl_hdf5
    d4rl:hopper-medium-v2                  load_d4rl             (not writable)
    /abs/or/./relative/or/~/name-v0        load_minari (folder)  write_minari into that folder
    namespace/name-v0                      load_minari (id)      write_minari under minari_root()

A Minari *folder* is a path written as one (absolute, or starting with `.` or `~`); its last
part is the dataset id, so it must look like `name-vN`. Any other text is a Minari id in the local
root (`$MINARI_DATASETS_PATH`, else `~/.minari/datasets`). When loading, an existing path is
always read as a folder.
"""

from __future__ import annotations

from pathlib import Path

from seqrl.buffers.d4rl_io import IncompletePolicy, load_d4rl, load_d4rl_hdf5, write_d4rl_hdf5
from seqrl.buffers.episode_store import EpisodeStore
from seqrl.buffers.minari_io import load_minari, minari_root, resolve_output_id, write_minari

HDF5_SUFFIXES = (".hdf5", ".h5")
"""File suffixes read and written in D4RL's HDF5 layout."""

D4RL_PREFIX = "d4rl:"


def load_dataset(
    spec: str | Path, incomplete_last_episode: IncompletePolicy = "error"
) -> EpisodeStore:
    """Load a dataset from whatever names it (see the module docstring for the forms).

    `incomplete_last_episode` applies to D4RL data (`seqrl.buffers.d4rl_io`)."""
    text = str(spec)
    if text.startswith(D4RL_PREFIX):
        return load_d4rl(text.removeprefix(D4RL_PREFIX), incomplete_last_episode)
    if Path(text).suffix.lower() in HDF5_SUFFIXES:
        return load_d4rl_hdf5(text, incomplete_last_episode=incomplete_last_episode)
    return load_minari(text)


def save_dataset(store: EpisodeStore, target: str | Path, overwrite: bool = False) -> Path:
    """Write `store` where `target` names it (module docstring); returns the file or folder.

    Mirrors `load_dataset`, so `load_dataset(save_dataset(store, t))` gives the same arrays.
    An existing target is a `FileExistsError` unless `overwrite`.
    """
    path = check_save_target(target, overwrite)
    text = str(target)
    if Path(text).suffix.lower() in HDF5_SUFFIXES:
        return write_d4rl_hdf5(store, path, overwrite=overwrite)
    if _is_folder(text):
        return write_minari(store, path.name, overwrite=overwrite, root=path.parent)
    return write_minari(store, text, overwrite=overwrite)


def check_save_target(target: str | Path, overwrite: bool = False) -> Path:
    """Where `save_dataset(store, target)` will write, checked before any work is done.

    Raises a `ValueError` for a target that names no writable format (a `d4rl:` name, a Minari
    id or folder name not of the form `name-vN`) and a `FileExistsError` for an existing one
    unless `overwrite`.
    """
    text = str(target)
    if text.startswith(D4RL_PREFIX):
        raise ValueError(
            f"{text!r}: datasets of the d4rl package cannot be written. Fix: write a D4RL-layout "
            "file instead (a path ending in .hdf5)"
        )
    if Path(text).suffix.lower() in HDF5_SUFFIXES:
        path = Path(text).expanduser()
        if path.exists() and not overwrite:
            raise FileExistsError(
                f"{path} already exists. Fix: choose another path or pass overwrite=True "
                "(--overwrite)"
            )
        return path
    if _is_folder(text):
        folder = Path(text).expanduser().resolve()
        resolve_output_id(folder.name, overwrite, root=folder.parent)
        return folder
    return minari_root() / resolve_output_id(text, overwrite)


def _is_folder(text: str) -> bool:
    """True for text written as a path (absolute, or starting with . or ~), not as a Minari id."""
    return Path(text).is_absolute() or text.startswith((".", "~"))
