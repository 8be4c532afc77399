"""load_dataset / save_dataset: every writable form round-trips, bad targets fail before writing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import seqrl.buffers
from seqrl.buffers import StoreMetadata, load_dataset, save_dataset
from seqrl.buffers.datasets import check_save_target
from tests.buffers.helpers import assert_same_arrays, random_store


def test_save_dataset_to_a_minari_id_writes_under_the_minari_root(minari_root: Path) -> None:
    meta = StoreMetadata(ref_min_score=-1.0, ref_max_score=1.0)
    store = random_store(seed=0, num_episodes=4, metadata=meta)
    path = save_dataset(store, "test/save/id-v0")
    assert path == minari_root / "test/save/id-v0"
    assert (path / "data" / "metadata.json").is_file()
    loaded = load_dataset("test/save/id-v0")
    assert_same_arrays(store, loaded)
    assert (loaded.metadata.ref_min_score, loaded.metadata.ref_max_score) == (-1.0, 1.0)


def test_save_dataset_to_a_minari_folder_writes_there_not_in_the_root(
    minari_root: Path, tmp_path: Path
) -> None:
    store = random_store(seed=1, act_dim=None, num_actions=3)
    folder = tmp_path / "elsewhere" / "mine-v0"
    path = save_dataset(store, folder)
    assert path == folder and (folder / "data" / "metadata.json").is_file()
    assert list(minari_root.iterdir()) == []  # nothing written in the Minari root ...
    assert_same_arrays(store, load_dataset(folder))
    assert_same_arrays(store, load_dataset(str(folder)))
    assert os.environ["MINARI_DATASETS_PATH"] == str(minari_root)  # ... and the root restored


@pytest.mark.parametrize("suffix", [".hdf5", ".h5"])
def test_save_dataset_to_an_hdf5_path_writes_d4rl_layout(tmp_path: Path, suffix: str) -> None:
    store = random_store(seed=2, metadata=StoreMetadata(env_id="Pendulum-v1", dataset_id="p"))
    path = save_dataset(store, tmp_path / f"data{suffix}")
    assert path == tmp_path / f"data{suffix}" and path.is_file()
    loaded = load_dataset(path)
    assert_same_arrays(store, loaded)
    assert loaded.metadata.env_id == "Pendulum-v1"


@pytest.mark.parametrize("form", ["id", "folder", "hdf5"])
def test_save_dataset_refuses_an_existing_target_unless_overwrite(
    minari_root: Path, tmp_path: Path, form: str
) -> None:
    target = {"id": "test/dup/x-v0", "folder": str(tmp_path / "x-v0"), "hdf5": tmp_path / "x.h5"}
    first, second = random_store(seed=3), random_store(seed=4)
    save_dataset(first, target[form])
    with pytest.raises(FileExistsError, match="overwrite"):
        save_dataset(second, target[form])
    assert_same_arrays(first, load_dataset(target[form]))
    save_dataset(second, target[form], overwrite=True)
    assert_same_arrays(second, load_dataset(target[form]))


def test_check_save_target_rejects_unwritable_targets_before_any_work(
    minari_root: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="d4rl package cannot be written"):
        check_save_target("d4rl:hopper-medium-v2")
    with pytest.raises(ValueError, match="not a valid Minari dataset id"):
        check_save_target("no version")
    with pytest.raises(ValueError, match="'folder' is not a valid Minari dataset id"):
        check_save_target(tmp_path / "folder")
    assert check_save_target("test/ok/fine-v1") == minari_root / "test/ok/fine-v1"
    assert list(minari_root.iterdir()) == [] and not (tmp_path / "folder").exists()


def test_every_exported_name_resolves_lazily_from_its_module() -> None:
    assert set(seqrl.buffers.__all__) == set(seqrl.buffers._SOURCES)
    for name in seqrl.buffers.__all__:
        value = getattr(seqrl.buffers, name)
        module = f"seqrl.buffers.{seqrl.buffers._SOURCES[name]}"
        assert value is getattr(__import__(module, fromlist=[name]), name), name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        seqrl.buffers.nothing  # noqa: B018
