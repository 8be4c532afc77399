"""Offline runs end to end: `seqrl train dt` on a small dataset, resume, eval, plot, load_policy."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from seqrl.agents.dt import DecisionTransformer
from seqrl.checkpoint import latest_checkpoint, load_config, load_model_weights
from seqrl.cli import main
from seqrl.export import load_policy
from seqrl.train.runs import resolve_config, train_run

TINY = [
    "agent.width=16",
    "agent.layers=1",
    "agent.heads=1",
    "agent.context_len=4",
    "agent.batch_size=8",
    "agent.warmup_steps=2",
    "policy.target_return=-100",
    "train.log_every=2",
    "train.eval_every=0",
    "train.eval_episodes=2",
    "train.eval_num_envs=2",
    "train.checkpoint_every=3",
]


def _interrupting_update(at: int):
    original = DecisionTransformer.update

    def update(self, batch):
        metrics = original(self, batch)
        if self.updates == at:
            os.kill(os.getpid(), signal.SIGINT)
        return metrics

    return update


def test_dt_run_stopped_and_resumed_ends_with_identical_weights(
    pendulum_dataset, tmp_path, monkeypatch
):
    config = resolve_config("dt", str(pendulum_dataset), None, [*TINY, "train.steps=10"])
    train_run(tmp_path / "full", config, progress=False)
    monkeypatch.setattr(DecisionTransformer, "update", _interrupting_update(4))
    with pytest.raises(KeyboardInterrupt):
        train_run(tmp_path / "split", config, progress=False)
    assert latest_checkpoint(tmp_path / "split").name == "step_00000004"
    monkeypatch.undo()
    torch.manual_seed(1234)  # global RNG state at resume time must not matter
    train_run(tmp_path / "split", resume=True, progress=False)
    full = load_model_weights(latest_checkpoint(tmp_path / "full"))
    split = load_model_weights(latest_checkpoint(tmp_path / "split"))
    assert latest_checkpoint(tmp_path / "split").name == "step_00000010"
    for key, value in full.items():
        assert torch.equal(value, split[key]), key


def test_new_run_refuses_to_overwrite_an_existing_one(pendulum_dataset, tmp_path):
    config = resolve_config("dt", str(pendulum_dataset), None, [*TINY, "train.steps=2"])
    train_run(tmp_path / "run", config, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train_run(tmp_path / "run", config, progress=False)


def test_cli_train_eval_plot_and_load_policy(pendulum_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "dt", "--dataset", str(pendulum_dataset), "--steps", "4"]
    args += [x for item in TINY for x in ("--set", item)] + ["--run-dir", str(run_dir)]
    assert main(args) == 0
    config = load_config(run_dir)
    assert config["env_id"] == "Pendulum-v1" and config["spec"]["action_high"] == [2.0]
    assert config["agent"]["width"] == 16 and config["train"]["steps"] == 4
    assert config["policy"] == {"target_return": -100.0, "inference": "window"}
    assert (run_dir / "tb").is_dir() and (run_dir / "metrics.jsonl").is_file()

    evaluation = ["eval", str(run_dir), "--episodes", "3", "--num-envs", "2"]
    assert main([*evaluation, "--policy", "target_return=-50", "--policy", "inference=window"]) == 0
    out = capsys.readouterr().out
    assert "episodes" in out and "| 3 |" in out
    # cache inference is not the trained function of a model without a sliding window
    assert main([*evaluation, "--policy", "inference=cache"]) == 2
    assert "attention_window" in capsys.readouterr().err
    assert main([*evaluation, "--policy", "target_retrun=-50"]) == 2
    err = capsys.readouterr().err
    assert "unknown setting policy.target_retrun (did you mean policy.target_return?)" in err

    assert main(["plot", str(run_dir)]) == 0
    assert (run_dir / "curves.png").stat().st_size > 1000

    policy = load_policy(run_dir)  # one env, NumPy in and out
    policy.reset()
    action = policy.act(np.zeros(3, dtype=np.float32))
    assert isinstance(action, np.ndarray) and action.shape == (1,) and abs(action[0]) <= 2.0
    action = policy.act(np.ones(3, dtype=np.float32), reward=-1.0)
    assert action.shape == (1,)


def test_cli_reports_config_typos_in_one_line(pendulum_dataset, tmp_path, capsys):
    code = main(["train", "dt", "--dataset", str(pendulum_dataset), "--set", "agent.widht=8"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown setting agent.widht (did you mean agent.width?)" in err
    assert main(["train", "dt", "--dataset", str(tmp_path / "missing.hdf5")]) == 2
    assert "missing.hdf5" in capsys.readouterr().err
    assert main(["train", "bogus"]) == 2
    assert "unknown algorithm 'bogus'" in capsys.readouterr().err


def test_dataset_spaces_must_match_the_eval_env(pendulum_dataset, tmp_path):
    config = resolve_config("dt", str(pendulum_dataset), None, [*TINY, "env_id=Hopper-v5"])
    with pytest.raises(ValueError, match="Hopper-v5"):
        train_run(tmp_path / "run", config, progress=False)
