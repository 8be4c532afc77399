"""Every registered agent honours the Agent and Policy contracts (seqrl/core.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqrl.agents import REGISTRY
from tests.agents.helpers import CONTINUOUS, DISCRETE, observation_stream, random_window_batch
from tests.buffers.test_rollout import collect_synthetic_rollout

TINY = {
    "dt": {"width": 16, "layers": 2, "heads": 2, "context_len": 6, "warmup_steps": 1},
    "recurrent-ppo": {"backbone": "lstm", "width": 16, "layers": 1, "memory": 6, "chunk_len": 4},
}


def _make(name, spec):
    entry = REGISTRY[name]
    config = entry.config_cls(**TINY.get(name, {}))
    return entry, entry.agent_cls(config, spec)


def _batch(entry, spec, seed=0, agent=None):
    """A tiny synthetic batch of the kind the agent's `update` takes."""
    if entry.batch == "window":
        return random_window_batch(spec, context=6, seed=seed)
    if entry.batch == "rollout":  # collected by the agent's own sampling policy
        return collect_synthetic_rollout(agent, seed=seed)
    raise NotImplementedError(f"no synthetic batch for {entry.batch!r} agents yet")


@pytest.mark.parametrize("spec", [CONTINUOUS, DISCRETE], ids=["box", "discrete"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_update_gives_finite_metrics_and_a_gradient_on_every_parameter(name, spec):
    torch.manual_seed(0)
    entry, agent = _make(name, spec)
    metrics = agent.update(_batch(entry, spec, agent=agent))
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    assert all(k.count("/") == 1 for k in metrics), "metric keys are namespaced"
    for pname, param in agent.model.named_parameters():
        assert param.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(param.grad).all(), pname


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_state_dict_round_trips_exactly(name):
    torch.manual_seed(0)
    entry, agent = _make(name, CONTINUOUS)
    for seed in range(2):
        agent.update(_batch(entry, CONTINUOUS, seed, agent))
    _, clone = _make(name, CONTINUOUS)
    clone.load_state_dict(agent.state_dict())
    for key, value in agent.model.state_dict().items():
        assert torch.equal(value, clone.model.state_dict()[key]), key
    # optimizer state restored, not shared: an update of the original leaves the clone's alone
    clone_optimizer = [
        v.clone()
        for group in clone.state_dict()["optimizer"]["state"].values()
        for v in group.values()
        if isinstance(v, torch.Tensor)
    ]
    snapshot = agent.state_dict()
    fresh = _make(name, CONTINUOUS)[1]
    fresh.load_state_dict(snapshot)
    fresh.update(_batch(entry, CONTINUOUS, 3, fresh))
    after = [
        v
        for group in clone.state_dict()["optimizer"]["state"].values()
        for v in group.values()
        if isinstance(v, torch.Tensor)
    ]
    assert clone_optimizer and all(torch.equal(x, y) for x, y in zip(clone_optimizer, after))
    # optimizer state restored too: the next update is identical
    torch.manual_seed(5)
    first = agent.update(_batch(entry, CONTINUOUS, 7, agent))
    torch.manual_seed(5)
    second = clone.update(_batch(entry, CONTINUOUS, 7, clone))
    assert first == second


@pytest.mark.parametrize("spec", [CONTINUOUS, DISCRETE], ids=["box", "discrete"])
@pytest.mark.parametrize("num_envs", [1, 3])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_policy_acts_for_one_or_several_envs(name, spec, num_envs):
    _, agent = _make(name, spec)
    policy = agent.policy(num_envs=num_envs)
    obs, rewards = observation_stream(spec, 4, num_envs)
    policy.reset()
    for t in range(4):
        action = policy.act(obs[t], None if t == 0 else rewards[t - 1]).action
        assert action.shape == (num_envs, *spec.action_shape)
        if spec.discrete:
            assert action.dtype == torch.long and ((action >= 0) & (action < spec.action_dim)).all()
        else:
            assert torch.isfinite(action).all()
            assert (action.abs() <= torch.tensor(spec.action_high) + 1e-6).all()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_policy_reset_clears_only_the_chosen_envs(name):
    torch.manual_seed(0)
    _, agent = _make(name, CONTINUOUS)
    agent.update(_batch(REGISTRY[name], CONTINUOUS, agent=agent))  # non-trivial weights
    obs, rewards = observation_stream(CONTINUOUS, 8, 3, seed=1)
    policy = agent.policy(num_envs=3)
    untouched = agent.policy(num_envs=3)
    fresh = agent.policy(num_envs=3)
    policy.reset()
    untouched.reset()
    for t in range(4):
        reward = None if t == 0 else rewards[t - 1]
        policy.act(obs[t], reward)
        untouched.act(obs[t], reward)
    policy.reset(np.array([False, True, False]))
    fresh.reset()
    for t in range(4, 8):
        reward = rewards[t - 1]
        got = policy.act(obs[t], reward).action
        cont = untouched.act(obs[t], reward).action
        restarted = fresh.act(obs[t], None if t == 4 else reward).action
        torch.testing.assert_close(got[[0, 2]], cont[[0, 2]])
        torch.testing.assert_close(got[1], restarted[1])
