"""`seqrl datasets`: list the offline datasets on this machine, or describe one.

    seqrl datasets                       # Minari datasets in the local root ($MINARI_DATASETS_PATH)
    seqrl datasets --path ../shared/data # ... plus the D4RL-layout .hdf5 files found there
    seqrl datasets show seqrl-bench/hopper/medium-v0

Every dataset is loaded through the same loaders training uses, so a dataset that lists without
an error also trains without one; a dataset that fails to load is listed with its error.
Normalized scores use `seqrl.envs.scores.ReferenceScores` with the dataset's own reference
scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqrl.buffers import HDF5_SUFFIXES, EpisodeStore, load_dataset
from seqrl.buffers.minari_io import list_minari_ids, minari_root, resolve_minari_path


@dataclass
class DatasetInfo:
    """One row of `seqrl datasets`."""

    name: str
    """Minari id, or the path of an HDF5 file / dataset folder."""
    format: str
    """`minari` or `d4rl-hdf5`."""
    path: Path
    size_mb: float
    summary: dict[str, Any] | None = None
    """`EpisodeStore.summary()`, None when loading failed."""
    error: str | None = None
    """Why the dataset could not be loaded."""


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def _describe(name: str, fmt: str, path: Path) -> tuple[DatasetInfo, EpisodeStore | None]:
    info = DatasetInfo(name=name, format=fmt, path=path, size_mb=_size_mb(path))
    try:
        store = load_dataset(path, incomplete_last_episode="truncate")  # as `seqrl train`
    except (ValueError, FileNotFoundError, ImportError, OSError) as exc:
        info.error = str(exc)
        return info, None
    info.summary = store.summary()
    return info, store


def _candidates(root: Path, paths: Iterable[str | Path]) -> list[tuple[str, str, Path]]:
    """(name, format, path) of every dataset in the Minari root and under `paths`."""
    found = [(i, "minari", root / i) for i in list_minari_ids(root)]
    for entry in paths:
        entry = Path(entry).expanduser()
        if entry.is_file() and entry.suffix.lower() in HDF5_SUFFIXES:
            found.append((str(entry), "d4rl-hdf5", entry))
        elif (entry / "data" / "metadata.json").is_file():
            found.append((str(entry), "minari", entry))
        elif entry.is_dir():
            for file in sorted(entry.iterdir()):
                if file.is_file() and file.suffix.lower() in HDF5_SUFFIXES:
                    found.append((str(file), "d4rl-hdf5", file))
        else:
            raise FileNotFoundError(
                f"{entry}: not a .hdf5 file, a Minari dataset folder or a directory. Fix: check "
                "the --path argument"
            )
    return found


def list_datasets(
    root: str | Path | None = None, paths: Sequence[str | Path] = ()
) -> list[DatasetInfo]:
    """Every Minari dataset under `root` (default: the local Minari root) and every D4RL-layout
    HDF5 file / Minari folder given in `paths` (directories are scanned one level deep)."""
    base = Path(root).expanduser() if root is not None else minari_root()
    return [_describe(name, fmt, path)[0] for name, fmt, path in _candidates(base, paths)]


def _normalized(value: float, summary: dict[str, Any]) -> float | None:
    from seqrl.envs.scores import ReferenceScores

    lo, hi = summary.get("ref_min_score"), summary.get("ref_max_score")
    if lo is None or hi is None or lo == hi:
        return None
    return float(ReferenceScores(lo, hi).normalize(value))


def format_table(infos: Sequence[DatasetInfo]) -> str:
    """A plain-text table of `list_datasets` rows."""
    header = ("dataset", "format", "MB", "episodes", "steps", "return mean ± std [min, max]",
              "ref min / max", "norm.")  # fmt: skip
    rows = [header]
    errors = []
    for info in infos:
        s = info.summary
        if s is None:
            rows.append((info.name, info.format, f"{info.size_mb:.1f}", "-", "-", "load error",
                         "-", "-"))  # fmt: skip
            errors.append(f"  {info.name}: {info.error}")
            continue
        ref = (
            f"{s['ref_min_score']:.1f} / {s['ref_max_score']:.1f}"
            if s["ref_min_score"] is not None and s["ref_max_score"] is not None
            else "-"
        )
        norm = _normalized(s["return_mean"], s)
        rows.append((
            info.name, info.format, f"{info.size_mb:.1f}", str(s["episodes"]), str(s["steps"]),
            f"{s['return_mean']:.1f} ± {s['return_std']:.1f} "
            f"[{s['return_min']:.1f}, {s['return_max']:.1f}]",
            ref, "-" if norm is None else f"{norm:.1f}",
        ))  # fmt: skip
    if len(rows) == 1:
        return (
            f"no datasets found in the Minari root {minari_root()} (set MINARI_DATASETS_PATH, "
            "or pass --path DIR for D4RL .hdf5 files)"
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + (["", "errors:", *errors] if errors else []))


def datasets_table(root: str | Path | None = None, paths: Sequence[str | Path] = ()) -> str:
    """What `seqrl datasets [--root DIR] [--path P ...]` prints."""
    return format_table(list_datasets(root, paths))


def dataset_report(dataset: str | Path) -> str:
    """What `seqrl datasets show ID` prints: one dataset (Minari id or folder, or .hdf5 file)."""
    text = str(dataset)
    if Path(text).suffix.lower() in HDF5_SUFFIXES:
        path, fmt = Path(text).expanduser(), "d4rl-hdf5"
    else:
        path, fmt = resolve_minari_path(text).parent, "minari"
    # a D4RL file's unfinished last episode is shown as `seqrl train` uses it (kept, truncated);
    # the note in the metadata's extra fields says so
    store = load_dataset(path, incomplete_last_episode="truncate")
    s = store.summary()
    meta = store.metadata
    returns, lengths = store.episode_returns, store.episode_lengths
    pct = np.percentile(returns, [0, 25, 50, 75, 100])
    lines = [
        f"dataset      {meta.dataset_id or text}",
        f"format       {fmt}",
        f"path         {path}  ({_size_mb(path):.1f} MB)",
        f"env          {meta.env_id or 'unknown'}",
        f"episodes     {s['episodes']}  ({s['terminated_episodes']} terminated, "
        f"{s['episodes'] - s['terminated_episodes']} truncated)",
        f"steps        {s['steps']}  (episode length mean {lengths.mean():.1f}, "
        f"min {lengths.min()}, max {lengths.max()})",
        f"observations {s['observation_shape']} {store.observations.dtype}"
        + (f"  space {meta.observation_space}" if meta.observation_space is not None else ""),
        f"actions      {s['action_shape']} {store.actions.dtype}"
        + (f"  space {meta.action_space}" if meta.action_space is not None else ""),
        f"return       mean {s['return_mean']:.2f} ± {s['return_std']:.2f}; percentiles "
        f"0/25/50/75/100: {' / '.join(f'{p:.1f}' for p in pct)}",
    ]
    if s["ref_min_score"] is not None and s["ref_max_score"] is not None:
        norm = _normalized(s["return_mean"], s)
        lines.append(
            f"reference    min {s['ref_min_score']:.4f}, max {s['ref_max_score']:.4f}; dataset "
            f"mean normalized score {norm:.1f}"
        )
    else:
        lines.append("reference    no ref_min_score / ref_max_score in the metadata")
    mean, std = store.observation_mean, store.observation_std
    lines.append(f"obs mean     {np.array2string(mean, precision=3, max_line_width=200)}")
    lines.append(f"obs std      {np.array2string(std, precision=3, max_line_width=200)}")
    for key, value in meta.extra.items():
        lines.append(f"{key:<12} {value}")
    return "\n".join(lines)
