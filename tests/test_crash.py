"""Crash safety: `seqrl train` killed with SIGKILL at 20+ random moments, some of them inside a
checkpoint write, for an offline (dt) and an online (recurrent-ppo) agent.

After every kill the run directory holds only valid checkpoints (or none yet) and `--resume`
continues it; the offline run, finished after all the kills, ends bit-identical (weights and
logged losses) to an uninterrupted run. Slow (a few minutes): `.ci/run` runs it explicitly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from seqrl.checkpoint import find_checkpoint, latest_checkpoint, load_model_weights
from seqrl.train.logging import read_metrics
from tests.test_reliability_cli import pendulum_arrays, write_hdf5

pytestmark = pytest.mark.slow

KILLS = 20
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _launch(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "seqrl", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
        cwd=Path(__file__).resolve().parents[1],
    )


def _kill_at_a_random_moment(proc: subprocess.Popen, run_dir: Path, rng, inside_write: bool):
    """SIGKILL `proc` once it trains: inside a checkpoint write (a temporary checkpoint folder
    exists) or after a random delay. Returns False when it finished first."""
    checkpoints, metrics = run_dir / "checkpoints", run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    delay = rng.uniform(0.0, 0.8)
    started, before = None, _mtime(metrics)
    while proc.poll() is None and time.monotonic() < deadline:
        if started is None and _mtime(metrics) != before:  # it logged: it is training
            started = time.monotonic()
        if inside_write and checkpoints.is_dir():
            if any(n.startswith(".step_") for n in os.listdir(checkpoints)):
                break
        elif started is not None and time.monotonic() - started > delay:
            break
        time.sleep(0.0005)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _assert_resumable(run_dir: Path) -> None:
    choice = find_checkpoint(run_dir)
    damaged = [line for line in choice.skipped if "latest" not in line]
    assert not damaged, damaged
    folders = list((run_dir / "checkpoints").glob("step_*")) if choice.folder is None else []
    assert not folders  # no valid one: there must be none at all


def _train_with_kills(new: list[str], run_dir: Path, seed: int) -> int:
    rng = np.random.default_rng(seed)
    kills = 0
    while True:
        resuming = (run_dir / "config.yaml").exists()
        argv = ["train", new[1], "--resume", str(run_dir)] if resuming else new
        proc = _launch(argv)
        if kills >= KILLS:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err.decode()
            return kills
        if _kill_at_a_random_moment(proc, run_dir, rng, inside_write=kills % 2 == 1):
            kills += 1
            _assert_resumable(run_dir)
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()
            return kills


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in read_metrics(run_dir) if "train/loss" in r]


def test_offline_run_killed_20_times_ends_bit_identical(tmp_path):
    data = write_hdf5(tmp_path / "pendulum.hdf5", **pendulum_arrays(600))
    settings = ["agent.width=32", "agent.layers=2", "agent.heads=2", "agent.context_len=8",
                "agent.batch_size=16", "agent.warmup_steps=10", "train.steps=1000",
                "train.log_every=10", "train.eval_every=0", "train.checkpoint_every=10",
                "train.keep_checkpoints=2"]  # fmt: skip
    base = ["train", "dt", "--dataset", data, *_sets(settings)]
    full = _launch([*base, "--run-dir", str(tmp_path / "full")])
    assert full.wait(timeout=600) == 0, full.stderr.read().decode()
    kills = _train_with_kills(
        [*base, "--run-dir", str(tmp_path / "killed")], tmp_path / "killed", 0
    )
    assert kills >= KILLS, f"the run finished after {kills} kills; raise train.steps"
    assert latest_checkpoint(tmp_path / "killed").name == "step_00001000"
    expected = load_model_weights(latest_checkpoint(tmp_path / "full"))
    got = load_model_weights(latest_checkpoint(tmp_path / "killed"))
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "full")


def test_online_run_killed_20_times_always_resumes(tmp_path):
    agent = ["agent.backbone=lstm", "agent.width=16", "agent.layers=1", "agent.chunk_len=4"]
    loop = ["train.num_envs=2", "train.rollout_steps=16", "train.steps=20000",
            "train.checkpoint_every=64", "train.eval_every=0", "train.eval_episodes=1",
            "train.eval_num_envs=1", "train.keep_checkpoints=2"]  # fmt: skip
    run_dir = tmp_path / "run"
    new = ["train", "recurrent-ppo", "--env", "CartPole-v1", "--run-dir", str(run_dir)]
    kills = _train_with_kills([*new, *_sets(agent + loop)], run_dir, 1)
    assert kills >= KILLS, f"the run finished after {kills} kills; raise train.steps"
    assert latest_checkpoint(run_dir).name == "step_00020000"
