"""RunSession and the run-directory format under failure: damaged checkpoints and pointers, torn
metric lines, leftovers, a second writer, a full disk, non-finite losses, evaluation failures."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import seqrl.checkpoint as checkpoint
from seqrl.checkpoint import (
    CheckpointError,
    find_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    run_lock,
    save_checkpoint,
    save_config,
    verify_checkpoint,
)
from seqrl.train.logging import read_metrics
from seqrl.train.offline import OfflineConfig, train_offline
from seqrl.train.session import NonFiniteError
from tests.train.test_offline import DropoutRegressionAgent, RegressionSampler


def _train(run_dir, steps, resume=False, **settings):
    torch.manual_seed(0)
    agent, sampler = DropoutRegressionAgent(), RegressionSampler(0)
    schedule = {"log_every": 1, "eval_every": 0, "checkpoint_every": 5, **settings}
    config = OfflineConfig(steps=steps, **schedule)
    train_offline(agent, sampler, run_dir, config, resume=resume, progress=False)
    return agent


def test_training_state_round_trips_without_pickle(tmp_path):
    agent = _train(tmp_path, 5)  # Adam state has int keys, betas a tuple
    folder = latest_checkpoint(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "meta.yaml",
        "model.safetensors",
        "state.json",
        "state.safetensors",
    ]
    agent_state, loop = load_checkpoint(folder)
    assert agent_state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    saved = agent.optimizer.state_dict()["state"]
    for key, slot in saved.items():
        for name, value in slot.items():
            assert torch.equal(agent_state["optimizer"]["state"][key][name], value)
    assert loop["step"] == 5 and isinstance(loop["sampler"]["rng"]["state"]["state"], int)
    state = {"a": np.arange(3, dtype=np.uint32), "b": np.float32(1.5), "c": {1: [None, True]}}
    tensors: dict = {}
    decoded = checkpoint.decode_state(
        json.loads(json.dumps(checkpoint.encode_state(state, tensors))), tensors
    )
    assert decoded["a"].dtype == np.uint32 and decoded["b"].dtype == np.float32
    assert decoded["c"] == {1: [None, True]}
    with pytest.raises(TypeError, match=r"cannot checkpoint object at state/x"):
        checkpoint.encode_state({"x": object()}, {})


def test_replaced_or_truncated_weights_fail_their_sha256(tmp_path):
    _train(tmp_path, 5)
    folder = latest_checkpoint(tmp_path)
    verify_checkpoint(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"model.safetensors: damaged or replaced"):
        verify_checkpoint(folder)
    assert latest_checkpoint(tmp_path) is None


def test_damaged_latest_or_newest_checkpoint_falls_back_to_the_newest_valid_one(tmp_path):
    _train(tmp_path, 15)
    root = tmp_path / "checkpoints"
    (root / "latest").write_bytes(b"\x80\x04garbage")
    choice = find_checkpoint(tmp_path)
    assert choice.folder.name == "step_00000015" and "latest" in choice.skipped[0]
    (root / "latest").unlink()
    assert latest_checkpoint(tmp_path).name == "step_00000015"
    (root / "step_00000015" / "state.json").write_text("{}")
    choice = find_checkpoint(tmp_path)
    assert choice.folder.name == "step_00000010"
    assert "state.json: damaged or replaced" in choice.skipped[0]
    agent = _train(tmp_path, 20, resume=True)  # resumes from step 10, not from the damaged 15
    assert agent.updates == 10
    assert latest_checkpoint(tmp_path).name == "step_00000020"


def test_resume_removes_leftovers_and_tolerates_a_torn_metrics_line(tmp_path):
    _train(tmp_path, 10)
    root = tmp_path / "checkpoints"
    (root / ".step_00000015.123.abcd.tmp").mkdir()
    (root / ".step_00000015.123.abcd.tmp" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".config.yaml.9.ff.tmp").write_text("half")
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 11, "train/lo')  # killed mid-write
    assert [r["step"] for r in read_metrics(tmp_path)][-1] == 10
    _train(tmp_path, 15, resume=True)
    assert not [p for p in [*root.iterdir(), *tmp_path.iterdir()] if p.name.endswith(".tmp")]
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(1, 16))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a JSON record"):
        read_metrics(tmp_path)


def test_resume_of_a_run_with_a_config_but_no_checkpoint_starts_at_step_zero(tmp_path, capsys):
    save_config(tmp_path, {"algo": "dt"})
    agent = _train(tmp_path, 3, resume=True, checkpoint_every=0)
    assert agent.updates == 3 and latest_checkpoint(tmp_path).name == "step_00000003"


def test_a_second_process_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    code = (
        "import sys, time; from seqrl.checkpoint import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FileExistsError, match=rf"is in use by process {holder.pid}"):
            _train(tmp_path, 3)
        assert not (tmp_path / "checkpoints").exists()  # nothing written
    finally:
        holder.kill()  # SIGKILL: the lock file stays, its lock does not
        holder.wait()
    assert (tmp_path / ".lock").exists()
    with run_lock(tmp_path), run_lock(tmp_path):  # re-entrant in one process
        pass
    _train(tmp_path, 3)


def test_files_are_written_with_the_users_umask(tmp_path):
    old = os.umask(0o002)
    try:
        _train(tmp_path, 5)
        save_config(tmp_path, {"algo": "dt"})
    finally:
        os.umask(old)
    folder = latest_checkpoint(tmp_path)
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o664
    assert (folder / "state.json").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "checkpoints" / "latest").stat().st_mode & 0o777 == 0o664
    assert folder.stat().st_mode & 0o777 == 0o775


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_says_so(tmp_path, monkeypatch):
    _train(tmp_path, 5)
    real_save = checkpoint.save_file

    def full_disk(tensors, path):
        real_save(tensors, path)  # a partial file exists when the disk fills up
        if path.endswith("state.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(
        CheckpointError,
        match=r"No space left on device; the previous checkpoint step_00000005 is intact",
    ):
        _train(tmp_path, 10, resume=True)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path).name == "step_00000005"
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    verify_checkpoint(tmp_path / "checkpoints" / "step_00000005")


class NaNAtUpdate(DropoutRegressionAgent):
    def __init__(self, bad_update: int) -> None:
        super().__init__()
        self.bad_update = bad_update

    def update(self, batch):
        x, y = batch
        if self.updates + 1 == self.bad_update:
            x = x * float("nan")  # a poisoned batch: NaN loss and gradients
        return super().update((x, y))


def _train_nan(run_dir, skip):
    torch.manual_seed(0)
    agent = NaNAtUpdate(bad_update=7)
    config = OfflineConfig(
        steps=10, log_every=1, eval_every=0, checkpoint_every=5, skip_nonfinite=skip
    )
    train_offline(agent, RegressionSampler(0), run_dir, config, progress=False)
    return agent


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(
        NonFiniteError,
        match=r"train/loss is nan in the update after step 6.*last good checkpoint \(step 5\) is kept",
    ):
        _train_nan(tmp_path, skip=False)
    assert latest_checkpoint(tmp_path).name == "step_00000005"
    weights, _ = load_checkpoint(latest_checkpoint(tmp_path))
    assert all(torch.isfinite(v).all() for v in weights["model"].values())


def test_skip_nonfinite_undoes_the_update_and_counts_it(tmp_path):
    agent = _train_nan(tmp_path, skip=True)
    assert all(torch.isfinite(p).all() for p in agent.model.parameters())
    assert agent.optimizer.state_dict()["state"][0]["step"].item() == 9  # one update undone
    records = read_metrics(tmp_path)
    assert "train/nonfinite_skipped" not in records[5]
    assert [r["train/nonfinite_skipped"] for r in records[6:]] == [1.0] * 4
    _, loop = load_checkpoint(latest_checkpoint(tmp_path))
    assert loop["nonfinite_skipped"] == 1


def _run_with_failing_evaluation(run_dir, **schedule):
    from seqrl.train.session import RunSession

    def failing_evaluation():
        raise RuntimeError("the simulator crashed")

    config = OfflineConfig(steps=4, checkpoint_every=0, **schedule)
    session = RunSession(run_dir, DropoutRegressionAgent(), config, 4, "update",
                         failing_evaluation, progress=False)  # fmt: skip
    with pytest.raises(RuntimeError, match="simulator"), session as run:
        while run.active():
            run.advance(1, run.update(RegressionSampler(0).sample()))


def test_the_checkpoint_is_written_before_an_evaluation_that_fails(tmp_path):
    _run_with_failing_evaluation(tmp_path / "a", eval_every=2)
    assert latest_checkpoint(tmp_path / "a") is None  # eval at step 2, no checkpoint was due
    _run_with_failing_evaluation(tmp_path / "b", eval_every=0)
    assert latest_checkpoint(tmp_path / "b").name == "step_00000004"  # before the final eval


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"steps": 0}, r"train.steps must be >= 1, got 0"),
        ({"steps": -5}, r"train.steps must be >= 1, got -5"),
        ({"eval_num_envs": 0}, r"train.eval_num_envs must be >= 1"),
        ({"checkpoint_every": -1}, r"train.checkpoint_every must be >= 0 \(0 = only at the end\)"),
        ({"keep_checkpoints": 0}, r"train.keep_checkpoints must be >= 1"),
    ],
)
def test_out_of_range_loop_settings_are_one_line_errors(setting, message):
    with pytest.raises(ValueError, match=message):
        OfflineConfig(**setting)


def test_checkpoint_writes_are_atomic_under_interruption(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(2)}}, {"step": 1})

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, {"model": {"w": torch.zeros(2)}}, {"step": 2})
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".step")]


def test_a_start_that_fails_before_writing_anything_leaves_no_run_directory(tmp_path):
    from seqrl.checkpoint import run_lock

    run_dir = tmp_path / "new-run"
    with pytest.raises(ValueError, match="bad dataset"), run_lock(run_dir):
        raise ValueError("bad dataset")
    assert not run_dir.exists()
    kept = tmp_path / "kept"
    with run_lock(kept):
        (kept / "config.yaml").write_text("algo: dt\n")
    assert (kept / "config.yaml").is_file()  # a run that wrote something stays
