"""Every command fails cleanly: bad input ends with status 2 and one line naming what is wrong
and how to fix it, never a traceback (unless --debug). One case per row of docs/reliability.md."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from seqrl.checkpoint import latest_checkpoint
from seqrl.cli import main
from tests.train.test_runs import TINY


def pendulum_arrays(num_steps: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    """D4RL-layout Pendulum data: episodes of 12 steps, the last one flagged by a timeout."""
    rng = np.random.default_rng(seed)
    timeouts = np.zeros(num_steps, bool)
    timeouts[11::12] = True
    return {
        "observations": rng.normal(size=(num_steps, 3)).astype(np.float32),
        "actions": rng.uniform(-2, 2, size=(num_steps, 1)).astype(np.float32),
        "rewards": rng.normal(size=num_steps).astype(np.float32),
        "terminals": np.zeros(num_steps, bool),
        "timeouts": timeouts,
    }


def write_hdf5(path: Path, **arrays: np.ndarray) -> str:
    with h5py.File(path, "w") as handle:
        for key, value in arrays.items():
            handle.create_dataset(key, data=value)
        handle.create_group("metadata").create_dataset("env_id", data="Pendulum-v1")
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status: int, err: str, expected: str) -> None:
    assert status == 2
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0, err
    assert expected in err, err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished 4-step DT run with checkpoints at steps 2 and 4."""
    folder = tmp_path_factory.mktemp("trained")
    data = write_hdf5(folder / "pendulum.hdf5", **pendulum_arrays())
    argv = ["train", "dt", "--dataset", data, "--run-dir", str(folder / "run"), "--steps", "4"]
    for item in [*TINY, "train.checkpoint_every=2"]:
        argv += ["--set", item]
    assert main(argv) == 0
    return folder / "run"


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def _train(data: str, *extra: str) -> list[str]:
    argv = ["train", "dt", "--dataset", data, "--steps", "4", *extra]
    for item in TINY:
        argv += ["--set", item]
    return argv


# ---------------------------------------------------------------------------------------- data


def _broken_datasets(tmp_path: Path) -> list[tuple[str, str]]:
    arrays = pendulum_arrays()
    no_timeouts = {k: v for k, v in arrays.items() if k != "timeouts"}
    nan = {**arrays, "observations": arrays["observations"].copy()}
    nan["observations"][30, 1] = np.nan
    flags = {**arrays, "terminals": np.full(60, 2, np.int64)}
    (tmp_path / "text.hdf5").write_text("not hdf5")
    return [
        (str(tmp_path / "absent.hdf5"), "absent.hdf5: no such file"),
        (str(tmp_path / "text.hdf5"), "not a readable HDF5 file"),
        (write_hdf5(tmp_path / "keys.hdf5", **no_timeouts), "missing key(s) ['timeouts']"),
        (write_hdf5(tmp_path / "nan.hdf5", **nan), "episode 2: non-finite value nan"),
        (write_hdf5(tmp_path / "flags.hdf5", **flags), "field 'terminals': value 2 at row 0"),
        (str(tmp_path / "no-such-minari-v0"), "no-such-minari-v0"),
    ]


def test_bad_datasets_are_one_line_errors(tmp_path, capsys):
    for data, expected in _broken_datasets(tmp_path):
        status, _, err = run(capsys, *_train(data, "--run-dir", str(tmp_path / "r")))
        assert_one_line_error(status, err, expected)


def test_data_that_does_not_fit_the_env_is_an_error_naming_both(tmp_path, capsys):
    data = write_hdf5(tmp_path / "p.hdf5", **pendulum_arrays())
    status, _, err = run(capsys, *_train(data, "--env", "CartPole-v1"))
    assert_one_line_error(status, err, "env 'CartPole-v1'")


def test_actions_outside_the_env_bounds_are_counted_in_a_warning(tmp_path, capsys):
    arrays = pendulum_arrays()
    arrays["actions"][:7] = 3.0  # Pendulum's Box is [-2, 2]
    data = write_hdf5(tmp_path / "wide.hdf5", **arrays)
    status, out, _ = run(capsys, *_train(data, "--run-dir", str(tmp_path / "r")))
    assert status == 0
    assert "warning: 7 of 60 dataset actions lie outside the env's action bounds [-2.0, 2.0]" in out


def test_a_d4rl_tail_without_an_end_flag_trains_from_the_command_line(tmp_path, capsys):
    arrays = {k: v[:65] for k, v in pendulum_arrays(72).items()}  # cut 5 steps into an episode
    data = write_hdf5(tmp_path / "capped.hdf5", **arrays)
    status, out, _ = run(capsys, *_train(data, "--run-dir", str(tmp_path / "a")))
    assert status == 0
    assert "the last 5 step(s) carry no end flag: kept as a truncated episode" in out
    status, out, _ = run(
        capsys, *_train(data, "--run-dir", str(tmp_path / "b"), "--dataset-tail", "drop")
    )
    assert status == 0 and "carry no end flag: dropped" in out
    status, _, err = run(capsys, *_train(data, "--dataset-tail", "error"))
    assert_one_line_error(status, err, "Fix: train with --dataset-tail truncate")
    status, _, err = run(capsys, *_train(data, "--dataset-tail", "keep"))
    assert_one_line_error(status, err, "dataset_tail 'keep' is not one of truncate, drop, error")


# ---------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--steps", "0"], "train.steps must be >= 1, got 0"),
        (["--steps", "-3"], "train.steps must be >= 1, got -3"),
        (["--set", "train.keep_checkpoints=0"], "train.keep_checkpoints must be >= 1"),
        (["--set", "agnet.width=8"], "unknown setting agnet.width (did you mean agent.width?)"),
        (["--set", "sede=1"], "unknown setting sede (did you mean seed?)"),
        (["--set", "agent.widht=8"], "unknown setting agent.widht (did you mean agent.width?)"),
        (["--set", "agent=8"], "agent is a section"),
        (["--set", "train.eval_seed=many"], "train.eval_seed: expected int, got 'many'"),
        (["--config", "absent.yaml"], "config file absent.yaml not found"),
        (["--policy", "target_retrun=5"], "target_retrun"),
    ],
)
def test_bad_settings_are_one_line_errors(extra, expected, tmp_path, capsys):
    data = write_hdf5(tmp_path / "p.hdf5", **pendulum_arrays())
    status, _, err = run(capsys, *_train(data, *extra))
    assert_one_line_error(status, err, expected)


def test_unknown_env_ids_and_the_module_form(tmp_path, capsys, monkeypatch):
    status, _, err = run(capsys, "train", "recurrent-ppo", "--env", "CartPol-v1")
    assert_one_line_error(
        status, err, "unknown environment id 'CartPol-v1'. Did you mean CartPole-v1"
    )
    status, _, err = run(capsys, "eval", "random", "--env", "no_such_module:Env-v0")
    assert_one_line_error(status, err, "cannot import module 'no_such_module'")
    (tmp_path / "my_envs.py").write_text(textwrap.dedent("""
        import gymnasium
        gymnasium.register("MyPendulum-v0", entry_point="gymnasium.envs.classic_control:PendulumEnv",
                           max_episode_steps=5)
    """))  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    status, out, err = run(
        capsys, "eval", "random", "--env", "my_envs:MyPendulum-v0", "--episodes", "2"
    )
    assert status == 0, err
    assert "length" in out


# ---------------------------------------------------------------------------------------- runs


def test_run_directories_that_are_not_runs_or_are_corrupt(run_copy, tmp_path, capsys):
    status, _, err = run(capsys, "eval", str(tmp_path / "nothing"))
    assert_one_line_error(status, err, "is not a seqrl run directory")
    status, _, err = run(capsys, "plot", str(tmp_path / "nothing"))
    assert_one_line_error(status, err, "metrics.jsonl not found")
    config = run_copy / "config.yaml"
    original = config.read_text()
    config.write_text("algo: dt\nagent: [unclosed\n")
    status, _, err = run(capsys, "eval", str(run_copy))
    assert_one_line_error(status, err, "config.yaml: not valid YAML (line 3)")
    config.write_text(original.replace("algo: dt", "algo: dtt"))
    status, _, err = run(capsys, "eval", str(run_copy))
    assert_one_line_error(status, err, "unknown algorithm 'dtt'")
    settings = yaml.safe_load(original)
    settings["agent"]["width"] = 32
    config.write_text(yaml.safe_dump(settings))
    status, _, err = run(capsys, "eval", str(run_copy))
    assert_one_line_error(status, err, "the weights do not fit the run's config.yaml")
    config.write_text(original)
    for weights in run_copy.glob("checkpoints/step_*/model.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])  # truncated
    status, _, err = run(capsys, "eval", str(run_copy))
    assert_one_line_error(status, err, "has no valid checkpoint:")
    assert "model.safetensors: damaged or replaced" in err
    for state in run_copy.glob("checkpoints/step_*/state.json"):
        state.unlink()
    status, _, err = run(capsys, "train", "dt", "--resume", str(run_copy))
    assert_one_line_error(status, err, "has no valid checkpoint to resume from: ")


def test_resume_refuses_other_algorithms_and_settings_and_extends_with_steps(run_copy, capsys):
    status, _, err = run(capsys, "train", "bc", "--resume", str(run_copy))
    assert_one_line_error(
        status, err, f"{run_copy} is a dt run, not bc. Fix: seqrl train dt --resume"
    )
    status, _, err = run(capsys, "train", "dt", "--resume", str(run_copy), "--set", "agent.lr=1")
    assert_one_line_error(status, err, "agent.lr cannot change on --resume")
    status, _, err = run(capsys, "train", "dt", "--resume", str(run_copy), "--dataset", "x.hdf5")
    assert_one_line_error(status, err, "--dataset cannot be combined with --resume")
    status, _, err = run(capsys, "train", "dt", "--resume", str(run_copy), "--set", "train.stpes=9")
    assert_one_line_error(status, err, "did you mean train.steps?")
    status, out, _ = run(capsys, "train", "dt", "--resume", str(run_copy), "--steps", "6")
    assert status == 0 and "resume: train.steps 4 -> 6" in out
    assert latest_checkpoint(run_copy).name == "step_00000006"
    assert yaml.safe_load((run_copy / "config.yaml").read_text())["train"]["steps"] == 6
    data = yaml.safe_load((run_copy / "config.yaml").read_text())["dataset"]
    status, _, err = run(capsys, *_train(data, "--run-dir", str(run_copy)))
    assert_one_line_error(status, err, "already holds a run (checkpoint at step 6)")


def test_other_commands_fail_cleanly(tmp_path, capsys):
    status, _, err = run(capsys, "datasets", "show", str(tmp_path / "absent.hdf5"))
    assert_one_line_error(status, err, "absent.hdf5")
    out = str(tmp_path / "x.hdf5")
    status, _, err = run(
        capsys, "collect", "--env", "Hopper-v55", "--policy", "random", "--out", out
    )
    assert_one_line_error(status, err, "unknown environment id 'Hopper-v55'")
    status, _, err = run(capsys, "collect", "--env", "CartPole-v1", "--policy", "random",
                         "--out", out, "--episodes", "0")  # fmt: skip
    assert_one_line_error(status, err, "--episodes and --num-envs must be >= 1")


def test_collect_never_unpickles_without_allow_pickle(tmp_path, capsys, monkeypatch):
    """An SB3 zip with only a `*-vecnormalize.pkl` beside it (a planted one that would run code)
    is refused with the fix; with the NumPy statistics beside it, it records."""
    import pickle

    from seqrl.collect import collect

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    sb3_kwargs = {"n_steps": 64, "batch_size": 32, "n_epochs": 1}
    trained = collect("CartPole-v1", None, 1, str(tmp_path / "seed.hdf5"), train_sb3_algo="ppo",
                      train_steps=64, sb3_dir=tmp_path / "sb3", sb3_kwargs=sb3_kwargs,
                      progress=False)  # fmt: skip
    zip_path = tmp_path / "expert.zip"
    shutil.copy(trained.sb3_checkpoint, zip_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "expert-vecnormalize.pkl").write_bytes(pickle.dumps(Payload()))
    args = ["collect", "--env", "CartPole-v1", "--policy", str(zip_path)]
    status, _, err = run(capsys, *args, "--out", str(tmp_path / "a.hdf5"), "--episodes", "1")
    assert_one_line_error(
        status, err, "expert-vecnormalize.pkl: VecNormalize statistics as a pickle"
    )
    assert "--allow-pickle" in err and not marker.exists()
    obsrms = trained.sb3_checkpoint.with_name(f"{trained.sb3_checkpoint.stem}-obsrms.npz")
    shutil.copy(obsrms, tmp_path / "expert-obsrms.npz")
    status, _, err = run(capsys, *args, "--out", str(tmp_path / "b.hdf5"), "--episodes", "1")
    assert status == 0, err
    assert not marker.exists()


def test_debug_shows_the_traceback_and_bugs_are_one_line_otherwise(tmp_path, capsys, monkeypatch):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "plot", str(tmp_path / "nothing")])
    import seqrl.train.plot

    def buggy(*args):
        raise RuntimeError("oops")

    monkeypatch.setattr(seqrl.train.plot, "plot_run", buggy)
    status, _, err = run(capsys, "plot", str(tmp_path))
    assert_one_line_error(status, err, "internal error (RuntimeError: oops); rerun with --debug")


# ---------------------------------------------------------------------------------------- safe loading


class CodeRunningPickle:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


NEEDED = ("config.yaml", "model.safetensors", "state.safetensors", "state.json", "meta.yaml")


def test_a_planted_pickle_in_any_run_file_is_never_executed(run_copy, tmp_path, capsys):
    import pickle

    from seqrl.export import load_policy

    shutil.rmtree(run_copy / "checkpoints" / "step_00000002")  # every checkpoint file is needed
    marker = tmp_path / "pwned"
    payload = pickle.dumps(CodeRunningPickle(marker))
    files = sorted(p for p in run_copy.rglob("*") if p.is_file() and p.name != ".lock")
    assert {p.name for p in files} >= {*NEEDED, "metrics.jsonl", "latest"}
    for planted in files:
        scratch = Path(shutil.copytree(run_copy, tmp_path / f"scratch-{planted.name}"))
        (scratch / planted.relative_to(run_copy)).write_bytes(payload)
        commands = {
            "eval": ["eval", str(scratch), "--episodes", "1", "--num-envs", "1"],
            "resume": ["train", "dt", "--resume", str(scratch), "--steps", "5"],
            "plot": ["plot", str(scratch), "--out", str(tmp_path / "curves.png")],
        }
        for name, argv in commands.items():
            status, _, err = run(capsys, *argv)
            assert not marker.exists(), f"{name} ran the pickle planted in {planted.name}"
            assert status == 0 or planted.name in err, (name, planted.name, err)
            if planted.name in NEEDED and name != "plot":
                assert status == 2 and planted.name in err, (name, planted.name, err)
        try:
            load_policy(scratch)
        except (ValueError, FileNotFoundError) as err:
            assert planted.name in str(err)
        assert not marker.exists()
