"""Data-parallel offline training with 2 gloo processes on CPU (seqrl.train.distributed).

Each multi-process test spawns 2 ranks that join a process group from torchrun's environment
variables (the code path `torchrun ... -m seqrl train` takes) and write what the test compares
to files; the single-process reference runs in the test process.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from seqrl.agents import REGISTRY
from seqrl.agents.examples import example_stats
from seqrl.checkpoint import latest_checkpoint, load_checkpoint
from seqrl.core import Loop, WindowBatch
from seqrl.envs import seed_everything
from seqrl.nn.optim import optimizer_step
from seqrl.train.distributed import (
    SINGLE,
    DataParallel,
    World,
    distributed_world,
    fingerprint,
    local_torchrun_env,
)
from seqrl.train.logging import read_metrics
from seqrl.train.offline import OfflineConfig, train_offline
from tests.agents.helpers import CONTINUOUS, exact_settings
from tests.train.test_offline import RegressionSampler

OFFLINE = sorted(name for name, entry in REGISTRY.items() if entry.loop is Loop.OFFLINE)


# ---- the pieces the ranks run ---------------------------------------------------------------
class FixedSampler:
    """Always the same batch (each rank its own)."""

    def __init__(self, batch) -> None:
        self.batch = batch

    def sample(self):
        return self.batch

    def state_dict(self):
        return {}

    def load_state_dict(self, state) -> None:
        pass


class EMARegressionAgent:
    """Regression through dropout with Adam, a scheduler and an EMA target network: state that
    must stay identical on every rank."""

    def __init__(
        self,
        bypass_optimizer_step: bool = False,
        local_drift: bool = False,
        interrupt_at: int | None = None,
    ) -> None:
        self.model = nn.Sequential(nn.Dropout(0.2), nn.Linear(4, 1))
        self.target = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-2)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1 / (1 + s))
        self.bypass, self.drift = bypass_optimizer_step, local_drift
        self.interrupt_at = interrupt_at
        self.updates = 0

    def update(self, batch):
        self.updates += 1
        if self.updates == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C reaching this rank mid-update
        x, y = batch
        loss = ((self.model(x).squeeze(-1) - y) ** 2).mean()
        if self.bypass:  # an agent stepping its optimizer itself: gradients not averaged
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            grad_norm = 0.0
        else:
            grad_norm = optimizer_step(self.optimizer, loss, self.model.parameters(), 1.0)
        self.scheduler.step()
        with torch.no_grad():
            for target, online in zip(self.target.parameters(), self.model.parameters()):
                target.lerp_(online, 0.1)
            if self.drift:  # state that follows the local batch, not the weights: diverges
                self.target[1].bias.add_(x.mean())
        return {"train/loss": loss.item(), "train/grad_norm": grad_norm}

    def policy(self, **kwargs):
        raise AssertionError("no evaluation in these tests")

    def state_dict(self):
        return {
            "model": {
                **self.model.state_dict(),
                **{f"target.{k}": v for k, v in self.target.state_dict().items()},
            },
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state):
        model = {k: v for k, v in state["model"].items() if not k.startswith("target.")}
        target = {k[7:]: v for k, v in state["model"].items() if k.startswith("target.")}
        self.model.load_state_dict(model)
        self.target.load_state_dict(target)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def _tiny_agent(name: str):
    """A registered agent with its tiny config and `exact_settings` (a split and a concatenated
    batch must give the same update)."""
    entry = REGISTRY[name]
    config = entry.config_cls(**{**entry.tiny_config, **exact_settings(name)})
    torch.manual_seed(0)
    return entry.agent_cls(config, CONTINUOUS, example_stats(CONTINUOUS))


def _train_ema(world: World, run_dir, steps: int, resume=False, **agent_kwargs):
    seed_everything(0)
    agent = EMARegressionAgent(**agent_kwargs)
    seed_everything(world.rank_seed(0))
    sampler = RegressionSampler(world.rank_seed(0))
    config = OfflineConfig(steps=steps, log_every=5, eval_every=0, checkpoint_every=10)
    train_offline(agent, sampler, run_dir, config, resume=resume, progress=False, world=world)
    return agent


def _join(rank: int, port: int) -> None:
    """torchrun's environment for rank `rank` of 2."""
    os.environ.update(local_torchrun_env(rank, 2, port))
    torch.set_num_threads(1)


def _step_worker(rank: int, port: int, out) -> None:
    _join(rank, port)
    with distributed_world() as world:
        for name in OFFLINE:
            agent = _tiny_agent(name)
            batch = REGISTRY[name].example_batch(agent, rank)
            config = OfflineConfig(steps=1, log_every=1, eval_every=0, checkpoint_every=1)
            train_offline(
                agent, FixedSampler(batch), out / name, config, progress=False, world=world
            )
            torch.save(agent.model.state_dict(), out / f"{name}-rank{rank}.pt")


def _resume_worker(rank: int, port: int, out) -> None:
    _join(rank, port)
    with distributed_world() as world:
        states = {"full": _train_ema(world, out / "full", 30).state_dict()}
        _train_ema(world, out / "split", 15)
        states["split"] = _train_ema(world, out / "split", 30, resume=True).state_dict()
        interrupt_at = 17 if rank == 1 else None  # only rank 1 gets the Ctrl-C
        try:
            _train_ema(world, out / "stopped", 30, interrupt_at=interrupt_at)
        except KeyboardInterrupt:
            states["stopped_at"] = torch.tensor(17)
        states["stopped"] = _train_ema(world, out / "stopped", 30, resume=True).state_dict()
        errors = {}
        for kind in ("bypass_optimizer_step", "local_drift"):
            try:
                _train_ema(world, out / kind, 10, **{kind: True})
            except RuntimeError as err:
                errors[kind] = str(err)
        torch.save({"states": states, "errors": errors}, out / f"rank{rank}.pt")


def _gloo_threads() -> list[str]:
    """Names of this process's gloo threads (Linux: /proc/self/task/*/comm)."""
    tasks = Path("/proc/self/task")
    names = [(task / "comm").read_text().strip() for task in tasks.iterdir()]
    return sorted(name for name in names if "gloo" in name)


def _teardown_worker(rank: int, port: int, out) -> None:
    _join(rank, port)
    with distributed_world() as world:
        # what building an agent does inside the world: a torch optimizer imports
        # torch.distributed.nn, whose default arguments bind the live group
        torch.optim.Adam(nn.Linear(2, 1).parameters())
        world.gather(rank)
        inside = _gloo_threads()
    torch.save({"inside": inside, "after": _gloo_threads()}, out / f"threads{rank}.pt")


def _spawn(worker, tmp_path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(worker, args=(port, tmp_path), nprocs=2, join=True)


def _concatenate(a: WindowBatch, b: WindowBatch) -> WindowBatch:
    return type(a)(
        **{
            f.name: torch.cat([getattr(a, f.name), getattr(b, f.name)])
            for f in dataclasses.fields(a)
        }
    )


def _assert_states_equal(a, b, where: str) -> None:
    assert fingerprint(a) == fingerprint(b), where


# ---- multi-process ---------------------------------------------------------------------------
def _draws_random_numbers(name: str) -> bool:
    """Whether the agent's update depends on torch's RNG (diffusion noise, sampled timesteps):
    then a split batch cannot draw the same numbers as the concatenated one."""
    first, second = _tiny_agent(name), _tiny_agent(name)
    batch = REGISTRY[name].example_batch(first, 0)
    torch.manual_seed(1)
    first.update(batch)
    torch.manual_seed(2)
    second.update(batch)
    return fingerprint(first.state_dict()) != fingerprint(second.state_dict())


def test_ddp_step_equals_one_process_step_on_the_concatenated_batch(tmp_path):
    _spawn(_step_worker, tmp_path)
    exact = [name for name in OFFLINE if not _draws_random_numbers(name)]
    assert "dt" in exact and "bc" in exact
    for name in OFFLINE:
        ranks = [torch.load(tmp_path / f"{name}-rank{r}.pt") for r in range(2)]
        _assert_states_equal(ranks[0], ranks[1], f"{name}: ranks differ")
        initial = _tiny_agent(name).model.state_dict()
        assert any(not torch.equal(ranks[0][k], v) for k, v in initial.items()), name
        assert list((tmp_path / name / "checkpoints").glob("step_*")), name
        if name not in exact:  # same ranks, same update rule; its noise is drawn per rank
            continue
        single = _tiny_agent(name)
        example = REGISTRY[name].example_batch
        single.update(_concatenate(example(single, 0), example(single, 1)))
        for key, value in single.model.state_dict().items():
            torch.testing.assert_close(ranks[0][key], value, rtol=0, atol=1e-6, msg=key)


def test_two_process_run_stopped_and_resumed_equals_uninterrupted_run(tmp_path):
    _spawn(_resume_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for rank in ranks:
        states = rank["states"]
        _assert_states_equal(states["full"], states["split"], "stopped by budget, resumed")
        assert int(states["stopped_at"]) == 17
        _assert_states_equal(states["full"], states["stopped"], "stopped by Ctrl-C, resumed")
    _assert_states_equal(ranks[0]["states"]["full"], ranks[1]["states"]["full"], "ranks differ")
    # the Ctrl-C on rank 1 stopped both ranks at step 17, rank 0 wrote the checkpoint
    _, loop_state = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "step_00000017")
    assert len(loop_state["ranks"]) == 2
    assert loop_state["ranks"][0]["sampler"] != loop_state["ranks"][1]["sampler"]
    records = read_metrics(tmp_path / "full")  # rank 0's file only: one record per log step
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    assert records[-1]["perf/global_batch"] == 32 and records[-1]["perf/batch_per_rank"] == 16
    assert latest_checkpoint(tmp_path / "full").name == "step_00000030"
    for rank in ranks:  # both ranks refuse the agents that would silently diverge
        assert (
            "did not call seqrl.nn.optim.optimizer_step" in rank["errors"]["bypass_optimizer_step"]
        )
        assert "hold different agent states" in rank["errors"]["local_drift"]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads Linux's /proc")
def test_leaving_the_world_stops_the_gloo_threads_after_an_optimizer_was_built(tmp_path):
    """A group that outlives destroy_process_group keeps gloo threads that can abort the process
    at interpreter exit (SIGABRT), which made the resume test above fail now and then."""
    _spawn(_teardown_worker, tmp_path)
    for rank in range(2):
        threads = torch.load(tmp_path / f"threads{rank}.pt")
        assert threads["inside"], f"rank {rank}: no gloo thread seen while the group was up"
        assert threads["after"] == [], f"rank {rank}: {threads['after']} outlived the group"


@pytest.mark.slow
def test_seqrl_train_under_torchrun_writes_one_run(tmp_path, pendulum_dataset):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "seqrl",
        "train",
        "dt",
        "--dataset",
        str(pendulum_dataset),
        "--run-dir",
        str(run_dir),
        "--steps",
        "4",
        "--set",
        "train.log_every=2",
        "--set",
        "train.eval_every=0",
        "--set",
        "train.eval_episodes=1",
        "--set",
        "train.eval_num_envs=1",
        "--set",
        "agent.width=16",
        "--set",
        "agent.layers=1",
        "--set",
        "agent.batch_size=8",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [r for r in read_metrics(run_dir) if "train/loss" in r]
    assert [r["step"] for r in records] == [2, 4]
    assert records[-1]["perf/global_batch"] == 16
    _, loop_state = load_checkpoint(latest_checkpoint(run_dir))
    assert len(loop_state["ranks"]) == 2


# ---- one process -----------------------------------------------------------------------------
def test_single_process_world_is_a_pass_through():
    parallel = DataParallel(SINGLE, EMARegressionAgent())
    state = {"sampler": {"rng": 1}}
    assert parallel.loop_state(state) is state
    assert parallel.restore(state) is state
    assert parallel.metrics({"train/loss": 1.0}) == {"train/loss": 1.0}
    assert World(rank=2, size=4).rank_seed(5) == 2005 and SINGLE.rank_seed(5) == 5


def test_resuming_with_another_process_count_is_refused():
    parallel = DataParallel(SINGLE, EMARegressionAgent())
    with pytest.raises(ValueError, match="torchrun --nproc_per_node 2"):
        parallel.restore({"sampler": {}, "ranks": [{}, {}]})


def test_fingerprint_sees_every_tensor_and_number():
    agent = EMARegressionAgent()
    before = fingerprint(agent.state_dict())
    assert fingerprint(agent.state_dict()) == before
    agent.target[1].bias.data += 1e-7
    assert fingerprint(agent.state_dict()) != before
    state = agent.state_dict()
    state["scheduler"]["last_epoch"] += 1
    assert fingerprint(state) != fingerprint(agent.state_dict())
