"""`seqrl.load_exported` and `experiments/robot_loop.py`: NumPy and ONNX Runtime only (a process
where importing torch fails runs them), every file checked against its sha256, and the state
kept per env (a reset touches only the envs it names)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from seqrl.export_graph import export_policy
from seqrl.runtime import ExportedPolicy, load_exported
from tests.export_helpers import make_run

REPO = Path(__file__).resolve().parents[1]
NO_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torch":
                raise ImportError(f"{name} is not installed on this robot")
            return None

    sys.meta_path.insert(0, Block())
    """
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An ONNX export of a small DT run (state: return-to-go, counters, a K-step window)."""
    folder = tmp_path_factory.mktemp("runtime")
    return export_policy(make_run("dt", folder, "continuous"), "onnx", folder / "onnx")


def _observations(steps: int = 30) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((steps, 3)).astype(np.float32)


def test_load_exported_runs_where_torch_cannot_be_imported(exported, tmp_path):
    observations = _observations()
    np.save(tmp_path / "obs.npy", observations)
    script = NO_TORCH + textwrap.dedent(
        f"""
        import numpy as np, seqrl
        policy = seqrl.load_exported({str(exported)!r})
        policy.reset()
        actions = [policy.act(obs, 0.5) for obs in np.load({str(tmp_path / "obs.npy")!r})]
        np.save({str(tmp_path / "actions.npy")!r}, np.stack(actions))
        print(sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    policy = load_exported(exported)
    policy.reset()
    expected = np.stack([policy.act(obs, 0.5) for obs in observations])
    np.testing.assert_array_equal(np.load(tmp_path / "actions.npy"), expected)
    assert np.ptp(expected) > 0, "a constant policy would make this test vacuous"


def test_robot_loop_runs_where_torch_cannot_be_imported(exported):
    argv = [str(exported), "--env", "Pendulum-v1", "--steps", "60", "--rate", "500"]
    script = NO_TORCH + textwrap.dedent(
        f"""
        import runpy
        sys.argv = ["robot_loop.py", *{argv!r}]
        runpy.run_path({str(REPO / "experiments" / "robot_loop.py")!r}, run_name="__main__")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["imported"] == [] and result["agent"] == "dt" and result["steps"] == 60
    assert 0 < result["p50_us"] <= result["p99_us"] <= result["max_us"]


def test_the_torch_blocker_really_blocks():
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH + "import torch\n"], capture_output=True, text=True
    )
    assert done.returncode != 0 and "is not installed on this robot" in done.stderr


@pytest.mark.parametrize("name", ["policy.onnx", "initial_state.npz"])
@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_a_damaged_file_is_refused_naming_it(exported, tmp_path, name, damage):
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in exported.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    data = (copy / name).read_bytes()
    middle = len(data) // 2
    if damage == "tampered":
        data = data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :]
    else:
        data = data[:middle]
    (copy / name).write_bytes(data)
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}: sha256 mismatch"):
        load_exported(copy)


def test_a_missing_file_or_folder_is_a_clear_error(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="not an exported policy"):
        load_exported(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "policy.json").write_bytes((exported / "policy.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="is missing; copy the whole export folder"):
        load_exported(copy)


def test_reset_restores_only_the_named_envs(exported):
    policy = load_exported(exported, num_envs=3)
    assert isinstance(policy, ExportedPolicy)
    for obs in _observations(5):
        policy.act(np.stack([obs, -obs, obs * 2]), np.ones(3, np.float32))
    before = {name: rows.copy() for name, rows in policy.state.items()}
    policy.reset(np.array([False, True, False]))
    for name, rows in policy.state.items():
        np.testing.assert_array_equal(rows[1], policy.initial[name])
        np.testing.assert_array_equal(rows[[0, 2]], before[name][[0, 2]])
    assert not np.array_equal(before["state.timestep"][1], policy.initial["state.timestep"])


def test_stochastic_export_draws_noise_from_the_seed_or_takes_the_callers(tmp_path):
    run = make_run("diffusion", tmp_path, "continuous")
    out = export_policy(run, "onnx", tmp_path / "onnx", scheduler="ddim", inference_steps=2)
    observations = _observations(6)

    def rollout(seed, noise=None):
        policy = load_exported(out, num_envs=2, seed=seed)
        policy.reset()
        return np.stack([policy.act(np.stack([o, -o]), None, noise) for o in observations])

    np.testing.assert_array_equal(rollout(0), rollout(0))
    assert not np.allclose(rollout(0), rollout(1))
    noise = np.random.default_rng(5).standard_normal((2, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(rollout(0, noise), rollout(1, noise))
    single = load_exported(out)
    single.reset()
    np.testing.assert_array_equal(
        single.act(observations[0], None, noise[0]), rollout(3, noise)[0, 0]
    )
    with pytest.raises(ValueError, match="noise has shape"):
        single.act(observations[0], None, noise)


def test_single_env_policy_equals_row_of_batched_and_checks_shapes(exported):
    single, batched = load_exported(exported), load_exported(exported, num_envs=2)
    single.reset()
    for obs in _observations(8):
        action = single.act(obs, 1.0)
        both = batched.act(np.stack([obs, obs]), np.ones(2, np.float32))
        np.testing.assert_allclose(action, both[0], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="num_envs=3"):
        batched.act(np.zeros((3, 3), np.float32))
