"""Reliability guarantees every registered agent must keep (nothing here names an algorithm):
same seed -> same run, a checkpoint in the safe format resumes bit for bit, and a policy refuses
a non-finite or wrongly shaped observation without touching its state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrl.agents import REGISTRY
from seqrl.agents.examples import example_stats
from seqrl.checkpoint import latest_checkpoint, load_checkpoint, load_model_weights
from seqrl.core import EnvSpec, Loop
from seqrl.envs import seed_everything
from seqrl.train.logging import read_metrics
from seqrl.train.offline import OfflineConfig, train_offline
from seqrl.train.online import OnlineConfig, train_online
from tests.agents.helpers import CONTINUOUS
from tests.buffers.helpers import random_store

NAMES = sorted(REGISTRY)
CARTPOLE = EnvSpec(obs_shape=(4,), action_dim=2, discrete=True)


def _short_run(name: str, run_dir, steps: int, resume: bool = False) -> None:
    """A few updates of `name` through its own loop, seeded as `seqrl train` seeds."""
    entry = REGISTRY[name]
    config = entry.config_cls(**entry.tiny_config)
    seed_everything(0)
    schedule = {"eval_every": 0, "checkpoint_every": 2, "steps": steps}
    if entry.loop is Loop.OFFLINE:
        store = random_store(seed=0, obs_shape=(5,), act_dim=2)
        agent = entry.agent_cls(config, CONTINUOUS, store.stats())
        sampler = entry.make_sampler(config, store, 0)
        loop = OfflineConfig(log_every=1, **schedule)
        train_offline(agent, sampler, run_dir, loop, resume=resume, progress=False)
    else:
        agent = entry.agent_cls(config, CARTPOLE)
        settings = {"num_envs": 2, "rollout_steps": 8, "eval_episodes": 1, "eval_num_envs": 1}
        loop = OnlineConfig(**{**schedule, "steps": steps * 16, "checkpoint_every": 32}, **settings)
        rollout = entry.rollout_settings(config)
        train_online(agent, "CartPole-v1", run_dir, loop, rollout, seed=0, resume=resume,
                     progress=False)  # fmt: skip


def _training_metrics(run_dir) -> list[dict[str, float]]:
    drop = ("time", "perf/")
    return [
        {k: v for k, v in record.items() if not k.startswith(drop)}
        for record in read_metrics(run_dir)
    ]


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_identical_metrics_and_weights(name, tmp_path):
    _short_run(name, tmp_path / "a", steps=4)
    _short_run(name, tmp_path / "b", steps=4)
    assert _training_metrics(tmp_path / "a") == _training_metrics(tmp_path / "b")
    weights_a = load_model_weights(latest_checkpoint(tmp_path / "a"))
    weights_b = load_model_weights(latest_checkpoint(tmp_path / "b"))
    assert weights_a.keys() == weights_b.keys()
    for key, value in weights_a.items():
        assert torch.equal(value, weights_b[key]), key
    state_a, _ = load_checkpoint(latest_checkpoint(tmp_path / "a"))  # the safe format holds it
    assert set(state_a) >= {"model"}


@pytest.mark.parametrize("name", [n for n in NAMES if REGISTRY[n].loop is Loop.OFFLINE])
def test_offline_agents_resume_bit_for_bit_from_the_safe_checkpoint_format(name, tmp_path):
    _short_run(name, tmp_path / "full", steps=4)
    _short_run(name, tmp_path / "split", steps=2)
    torch.manual_seed(99)
    _short_run(name, tmp_path / "split", steps=4, resume=True)
    full = load_model_weights(latest_checkpoint(tmp_path / "full"))
    split = load_model_weights(latest_checkpoint(tmp_path / "split"))
    for key, value in full.items():
        assert torch.equal(value, split[key]), key


@pytest.mark.parametrize("name", NAMES)
def test_policies_refuse_non_finite_or_misshaped_observations_naming_the_env_row(name):
    entry = REGISTRY[name]
    config = entry.config_cls(**entry.tiny_config)
    agent = entry.agent_cls(config, CONTINUOUS, example_stats(CONTINUOUS))
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(3, 5)).astype(np.float32)  # (N, *obs_shape)
    reference, policy = agent.policy(3), agent.policy(3)
    with torch.no_grad():
        poisoned = obs.copy()
        poisoned[1, 2] = np.nan
        with pytest.raises(ValueError, match=r"observation of env row 1 holds nan"):
            policy.act(poisoned)
        with pytest.raises(ValueError, match=r"observations of shape \(3, 4\), expected"):
            policy.act(obs[:, :4])
        with pytest.raises(ValueError, match=r"built for 3 envs"):
            policy.act(obs[:2])
        # the refused calls left the policy's state alone: it acts as a fresh one
        for _ in range(3):
            torch.manual_seed(0)
            expected = reference.act(obs).action
            torch.manual_seed(0)
            assert torch.equal(policy.act(obs).action, expected)
