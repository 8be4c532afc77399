"""`seqrl datasets`: the listing and the report of one dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqrl.buffers import StoreMetadata, save_dataset
from seqrl.datasets_catalog import dataset_report, datasets_table, list_datasets
from tests.buffers.helpers import random_store


@pytest.fixture
def two_datasets(minari_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    meta = StoreMetadata(ref_min_score=-10.0, ref_max_score=10.0)
    save_dataset(random_store(seed=0, num_episodes=5, metadata=meta), "test/a/one-v0")
    hdf5 = save_dataset(random_store(seed=1, num_episodes=3), tmp_path / "files" / "two.hdf5")
    return minari_root, hdf5


def test_list_datasets_reports_sizes_episodes_returns_and_scores(
    two_datasets: tuple[Path, Path],
) -> None:
    _, hdf5 = two_datasets
    infos = list_datasets(paths=[hdf5.parent])
    assert [i.format for i in infos] == ["minari", "d4rl-hdf5"]
    minari_info, hdf5_info = infos
    assert minari_info.name == "test/a/one-v0" and minari_info.summary is not None
    assert minari_info.summary["episodes"] == 5 and minari_info.summary["ref_max_score"] == 10.0
    assert hdf5_info.summary is not None and hdf5_info.summary["episodes"] == 3
    assert all(i.size_mb > 0 for i in infos)


def test_datasets_table_shows_statistics_and_normalized_score(
    two_datasets: tuple[Path, Path],
) -> None:
    _, hdf5 = two_datasets
    table = datasets_table(paths=[hdf5])
    store = random_store(seed=0, num_episodes=5)
    row = next(line for line in table.splitlines() if line.startswith("test/a/one-v0"))
    mean = store.episode_returns.mean()
    assert f"{mean:.1f} ± {store.episode_returns.std():.1f}" in row
    assert "-10.0 / 10.0" in row and f"{100 * (mean + 10) / 20:.1f}" in row
    assert str(hdf5) in table


def test_datasets_table_lists_a_broken_dataset_with_its_error(
    minari_root: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(b"not hdf5")
    table = datasets_table(paths=[bad])
    assert "load error" in table and "not a readable HDF5 file" in table


def test_datasets_table_says_where_it_looked_when_empty(minari_root: Path) -> None:
    assert str(minari_root) in datasets_table()


def test_dataset_report_describes_one_dataset(two_datasets: tuple[Path, Path]) -> None:
    _, hdf5 = two_datasets
    report = dataset_report("test/a/one-v0")
    assert "episodes     5" in report and "normalized score" in report
    assert "obs mean" in report
    assert "no ref_min_score" in dataset_report(hdf5)
    with pytest.raises(FileNotFoundError, match=r"minari download"):
        dataset_report("test/a/missing-v0")


def test_dataset_report_shows_a_d4rl_file_with_an_unfinished_last_episode(tmp_path: Path) -> None:
    """Real D4RL files end mid-episode (cut at 1M steps, no end flag): `seqrl datasets show`
    describes them as `seqrl train` uses them, and says what it did with the tail."""
    from tests.buffers.test_d4rl_io import flat_arrays, write_arrays

    arrays = flat_arrays(10)
    arrays["terminals"][:] = False
    arrays["timeouts"][:] = False
    arrays["terminals"][6] = True  # one episode of 7 steps, then 3 steps with no end flag
    path = write_arrays(tmp_path / "cut.hdf5", **arrays)
    report = dataset_report(path)
    assert "episodes     2" in report and "no end flag" in report
