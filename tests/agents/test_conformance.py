"""Every registered agent honours the Agent and Policy contracts (seqrl/core.py) and its registry
entry (seqrl/agents/registry.py). Nothing here names an algorithm: a new agent is covered by
adding its entry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqrl.agents import REGISTRY
from seqrl.agents.examples import example_stats
from seqrl.config import to_dict
from seqrl.core import Loop, Policy, RolloutSettings
from tests.agents.helpers import CONTINUOUS, DISCRETE, observation_stream
from tests.buffers.helpers import random_store

NAMES = sorted(REGISTRY)
OFFLINE = sorted(name for name, entry in REGISTRY.items() if entry.loop is Loop.OFFLINE)
ONLINE = sorted(name for name, entry in REGISTRY.items() if entry.loop is Loop.ONLINE)


def _make(name, spec, stats=None):
    entry = REGISTRY[name]
    config = entry.config_cls(**entry.tiny_config)
    return entry, entry.agent_cls(config, spec, stats)


def _batch(name, agent, seed=0):
    return REGISTRY[name].example_batch(agent, seed)


def _assert_same_batch(a, b):
    for key, value in vars(a).items():
        torch.testing.assert_close(value, vars(b)[key], rtol=0, atol=0, msg=key)


def _optimizer_tensors(agent):
    state = agent.state_dict()
    return [
        value.clone()
        for key, part in state.items()
        if key.startswith("optimizer") and isinstance(part, dict)
        for slot in part.get("state", {}).values()
        for value in slot.values()
        if isinstance(value, torch.Tensor)
    ]


@pytest.mark.parametrize("spec", [CONTINUOUS, DISCRETE], ids=["box", "discrete"])
@pytest.mark.parametrize("name", NAMES)
def test_update_gives_finite_metrics_and_a_gradient_on_every_parameter(name, spec):
    torch.manual_seed(0)
    _, agent = _make(name, spec, example_stats(spec))
    metrics = agent.update(_batch(name, agent))
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    assert all(k.count("/") == 1 for k in metrics), "metric keys are namespaced"
    for pname, param in agent.model.named_parameters():
        assert param.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(param.grad).all(), pname


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trips_exactly(name):
    torch.manual_seed(0)
    _, agent = _make(name, CONTINUOUS, example_stats(CONTINUOUS))
    for seed in range(2):
        agent.update(_batch(name, agent, seed))
    _, clone = _make(name, CONTINUOUS)
    clone.load_state_dict(agent.state_dict())
    for key, value in agent.model.state_dict().items():
        assert torch.equal(value, clone.model.state_dict()[key]), key
    # optimizer state restored, not shared: updating a third copy leaves the clone's alone
    before = _optimizer_tensors(clone)
    fresh = _make(name, CONTINUOUS)[1]
    fresh.load_state_dict(agent.state_dict())
    fresh.update(_batch(name, fresh, 3))
    after = _optimizer_tensors(clone)
    assert before and all(torch.equal(x, y) for x, y in zip(before, after))
    # ... and the next update of original and clone is identical
    torch.manual_seed(5)
    first = agent.update(_batch(name, agent, 7))
    torch.manual_seed(5)
    second = clone.update(_batch(name, clone, 7))
    assert first == second


@pytest.mark.parametrize("name", NAMES)
def test_agent_built_without_data_statistics_acts_like_the_trained_one_after_loading(name):
    """What `load_policy` does: build with stats=None, load the weights, act identically."""
    torch.manual_seed(0)
    _, agent = _make(name, CONTINUOUS, example_stats(CONTINUOUS, seed=3))
    agent.update(_batch(name, agent))
    _, loaded = _make(name, CONTINUOUS)
    loaded.load_state_dict({"model": agent.state_dict()["model"]})
    obs, rewards = observation_stream(CONTINUOUS, 6, 2, seed=2)
    policies = [agent.policy(2), loaded.policy(2)]
    for t in range(6):
        torch.manual_seed(t)  # agents that sample draw the same noise
        first = policies[0].act(obs[t], None if t == 0 else rewards[t - 1]).action
        torch.manual_seed(t)
        second = policies[1].act(obs[t], None if t == 0 else rewards[t - 1]).action
        torch.testing.assert_close(first, second, rtol=0, atol=0)


@pytest.mark.parametrize("spec", [CONTINUOUS, DISCRETE], ids=["box", "discrete"])
@pytest.mark.parametrize("explore", [False, True])
@pytest.mark.parametrize("num_envs", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_policy_acts_for_one_or_several_envs(name, spec, num_envs, explore):
    _, agent = _make(name, spec)
    policy = agent.policy(num_envs, explore=explore)
    assert isinstance(policy, Policy) and isinstance(policy, REGISTRY[name].policy_cls)
    obs, rewards = observation_stream(spec, 4, num_envs)
    policy.reset()
    for t in range(4):
        action = policy.act(obs[t], None if t == 0 else rewards[t - 1]).action
        assert action.shape == (num_envs, *spec.action_shape)
        if spec.discrete:
            assert action.dtype == torch.long and ((action >= 0) & (action < spec.action_dim)).all()
        else:
            assert torch.isfinite(action).all()
            low, high = torch.tensor(spec.action_low), torch.tensor(spec.action_high)
            assert ((action >= low - 1e-6) & (action <= high + 1e-6)).all()


@pytest.mark.parametrize("name", NAMES)
def test_acting_leaves_the_model_in_eval_mode_and_update_trains_again(name):
    """`act` is inference: it leaves every module in eval mode rather than switching back on each
    call (eval() + train() recurse through the module tree: 0.17 ms of DT's ~7 ms act at 100
    envs); `update` switches to train mode itself, so dropout is on for every gradient step."""
    torch.manual_seed(0)
    _, agent = _make(name, CONTINUOUS, example_stats(CONTINUOUS))
    runs: list[tuple[torch.nn.Module, bool]] = []
    for module in agent.model.modules():
        module.register_forward_pre_hook(lambda m, args: runs.append((m, m.training)))
    agent.model.train()
    policy = agent.policy(2)
    obs, rewards = observation_stream(CONTINUOUS, 3, 2)
    for t in range(3):
        policy.act(obs[t], None if t == 0 else rewards[t - 1])
    acting = {module for module, _ in runs}
    assert not any(training for _, training in runs), "a module ran in train mode while acting"
    assert not any(module.training for module in acting), "act switched back to train mode"
    modules = list(agent.model.modules())
    whole_model_training = []
    for module in modules:
        module.register_forward_pre_hook(
            lambda m, args: whole_model_training.append(all(x.training for x in modules))
        )
    agent.update(_batch(name, agent))
    assert any(whole_model_training), "update never ran the model in train mode"


@pytest.mark.parametrize("name", NAMES)
def test_policy_rejects_wrong_env_count_and_unknown_options_with_clear_errors(name):
    entry, agent = _make(name, CONTINUOUS)
    with pytest.raises(ValueError, match=r"unknown setting policy\.no_such_option.*valid"):
        agent.policy(2, no_such_option=1)
    policy = agent.policy(2)
    with pytest.raises(ValueError, match=r"built for 2 envs.*num_envs=3"):
        policy.act(np.zeros((3, *CONTINUOUS.obs_shape), np.float32))
    # every option the entry declares is accepted with its default value
    assert isinstance(agent.policy(2, **to_dict(entry.options_cls())), entry.policy_cls)


@pytest.mark.parametrize("name", NAMES)
def test_policy_reset_clears_only_the_chosen_envs(name):
    torch.manual_seed(0)
    _, agent = _make(name, CONTINUOUS)
    agent.update(_batch(name, agent))  # non-trivial weights
    obs, rewards = observation_stream(CONTINUOUS, 8, 3, seed=1)
    policy, untouched, fresh = agent.policy(3), agent.policy(3), agent.policy(3)
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
    with pytest.raises(ValueError, match="3 envs"):
        policy.reset(np.array([True, False]))


@pytest.mark.parametrize("name", OFFLINE)
@pytest.mark.parametrize("discrete", [False, True], ids=["box", "discrete"])
def test_offline_entry_builds_a_sampler_from_its_config_that_feeds_update(name, discrete):
    entry = REGISTRY[name]
    spec = DISCRETE if discrete else CONTINUOUS
    store = random_store(
        seed=0,
        num_episodes=6,
        obs_shape=spec.obs_shape,
        act_dim=None if discrete else spec.action_dim,
        num_actions=spec.action_dim,
    )
    _, agent = _make(name, spec, store.stats())
    sampler = entry.make_sampler(agent.config, store, 0)
    again = entry.make_sampler(agent.config, store, 0)
    first = sampler.sample()
    _assert_same_batch(first, again.sample())  # seeded
    state = sampler.state_dict()
    expected = sampler.sample()
    again.load_state_dict(state)
    _assert_same_batch(again.sample(), expected)  # resumable
    metrics = agent.update(first)
    assert all(math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("name", ONLINE)
def test_online_entry_gives_rollout_settings(name):
    entry = REGISTRY[name]
    settings = entry.rollout_settings(entry.config_cls(**entry.tiny_config))
    assert isinstance(settings, RolloutSettings)
    assert settings.chunk_len is None or settings.chunk_len >= 1
