"""The offline loop with a tiny agent: resume equality, checkpoints, logs, interruption."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from seqrl.checkpoint import latest_checkpoint, load_checkpoint, load_config, save_config
from seqrl.nn.optim import optimizer_step
from seqrl.train.logging import read_metrics
from seqrl.train.offline import OfflineConfig, train_offline


class RegressionSampler:
    """Random regression batches from a seeded NumPy Generator (the sampler contract)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.true_weights = np.arange(4, dtype=np.float32)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.rng.normal(size=(16, 4)).astype(np.float32)
        return torch.from_numpy(x), torch.from_numpy(x @ self.true_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class DropoutRegressionAgent:
    """Linear regression through dropout (uses torch's RNG) with Adam and a scheduler."""

    def __init__(self) -> None:
        self.model = nn.Sequential(nn.Dropout(0.2), nn.Linear(4, 1))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-2)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1 / (1 + s))
        self.interrupt_at: int | None = None
        self.updates = 0

    def update(self, batch):
        self.updates += 1
        if self.updates == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of an update
        x, y = batch
        loss = ((self.model(x).squeeze(-1) - y) ** 2).mean()
        grad_norm = optimizer_step(
            self.optimizer, loss, self.model.parameters(), 1.0, self.scheduler
        )
        return {"train/loss": loss.item(), "train/grad_norm": grad_norm}

    def policy(self, **kwargs):
        raise AssertionError("no evaluation in these tests")

    def state_dict(self):
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def _train(run_dir, steps, resume=False, interrupt_at=None, seed=0):
    torch.manual_seed(seed)
    agent, sampler = DropoutRegressionAgent(), RegressionSampler(seed)
    agent.interrupt_at = interrupt_at
    config = OfflineConfig(steps=steps, log_every=5, eval_every=0, checkpoint_every=10)
    train_offline(agent, sampler, run_dir, config, resume=resume, progress=False)
    return agent


def test_resumed_run_ends_with_identical_weights(tmp_path):
    full = _train(tmp_path / "full", steps=40)
    _train(tmp_path / "split", steps=20)
    torch.manual_seed(123)  # a different global RNG state must not matter after resume
    resumed = _train(tmp_path / "split", steps=40, resume=True, seed=99)
    for (name, a), (_, b) in zip(
        full.model.state_dict().items(), resumed.model.state_dict().items()
    ):
        assert torch.equal(a, b), name
    losses_full = [r["train/loss"] for r in read_metrics(tmp_path / "full") if "train/loss" in r]
    losses_split = [r["train/loss"] for r in read_metrics(tmp_path / "split") if "train/loss" in r]
    assert losses_full == losses_split


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        _train(tmp_path / "empty", steps=5, resume=True)


def test_ctrl_c_finishes_the_step_checkpoints_it_and_resume_matches_full_run(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run", steps=40, interrupt_at=17)
    folder = latest_checkpoint(tmp_path / "run")
    assert folder is not None and folder.name == "step_00000017"
    _, loop_state = load_checkpoint(folder)
    assert loop_state["step"] == 17
    resumed = _train(tmp_path / "run", steps=40, resume=True)
    full = _train(tmp_path / "full", steps=40)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    steps = [r["step"] for r in read_metrics(tmp_path / "run") if "train/loss" in r]
    assert steps == list(range(5, 41, 5))


def test_metrics_jsonl_and_tensorboard_are_written(tmp_path):
    _train(tmp_path / "run", steps=10)
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [5, 10]
    assert all(np.isfinite(r["train/loss"]) for r in records)
    assert "perf/steps_per_s" in records[-1]
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    json.dumps(records)  # plain data


def test_checkpoints_are_pruned_and_latest_is_complete(tmp_path):
    _train(tmp_path / "run", steps=50)
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert kept == ["step_00000030", "step_00000040", "step_00000050"]
    assert not list((tmp_path / "run" / "checkpoints").glob(".*"))  # no temporary leftovers
    assert latest_checkpoint(tmp_path / "run").name == "step_00000050"


def test_config_round_trips_and_missing_run_dir_is_explained(tmp_path):
    save_config(tmp_path, {"algo": "dt", "agent": {"width": 128}})
    assert load_config(tmp_path) == {"algo": "dt", "agent": {"width": 128}}
    with pytest.raises(FileNotFoundError, match="not a seqrl run directory"):
        load_config(tmp_path / "nope")


class RandomAgent(DropoutRegressionAgent):
    """The regression agent with a random CartPole policy, for evaluations."""

    def policy(self, num_envs: int = 1, **options: Any):
        import gymnasium as gym

        from seqrl.envs import RandomPolicy

        return RandomPolicy(gym.spaces.Discrete(2), num_envs, seed=0)


def test_train_asynchronous_evaluates_in_subprocesses_with_the_same_result(tmp_path, async_env_spy):
    from seqrl.train.offline import EvalTarget

    returns = []
    for asynchronous in (False, True):
        config = OfflineConfig(steps=2, eval_every=0, eval_episodes=3, eval_num_envs=2,
                               asynchronous=asynchronous)  # fmt: skip
        last = train_offline(RandomAgent(), RegressionSampler(0), tmp_path / str(asynchronous),
                             config, EvalTarget("CartPole-v1"), progress=False)  # fmt: skip
        returns.append(last["eval/return_mean"])
    assert async_env_spy == [False, True]
    # the random policy's actions depend only on its seed: both modes play the same episodes
    assert returns[1] == returns[0]
