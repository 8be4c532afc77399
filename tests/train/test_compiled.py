"""`--compile` (seqrl.train.compiled): compiled and eager `act` give the same actions for every
registered agent and policy option, also past the context with resets and without reaching
dynamo's recompile limit; the fallback and the attention probe.

Inductor's C++ code generation takes minutes per agent on a 2-core CPU, so the default tests
compile `act` with the `eager` backend (dynamo's tracing, guards, graph breaks and replayed side
effects: what can change a policy's behaviour, without code generation) and `update` with
`aot_eager` (adds AOT autograd's traced backward). Slow tests: the discrete-action variants and
inductor for DT.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from seqrl.agents import REGISTRY
from seqrl.agents.examples import example_stats
from seqrl.train.compiled import (
    CompiledAgent,
    attention_kernels,
    attention_line,
    compile_agent,
    compile_available,
)
from tests.agents.helpers import CONTINUOUS, DISCRETE, exact_settings, observation_stream

BACKEND = "eager"
NAMES = sorted(REGISTRY)


def _agent(name: str, spec, **settings):
    entry = REGISTRY[name]
    torch.manual_seed(0)
    config = entry.config_cls(**{**entry.tiny_config, **settings})
    return entry.agent_cls(config, spec, example_stats(spec))


def _option_sets(name: str) -> list[dict]:
    """The default options and, for each option with a fixed set of choices, every choice
    (DT's inference="window" | "cache")."""
    options = REGISTRY[name].options_cls
    sets = [{}]
    for field in dataclasses.fields(options):
        if field.name == "inference":
            sets += [{"inference": choice} for choice in ("window", "cache")]
    return sets


def _rollout(policy, obs, rewards, seed: int) -> list[np.ndarray]:
    torch.manual_seed(seed)  # stochastic policies draw the same numbers
    actions = []
    for t in range(len(obs)):
        if t == 5:
            policy.reset(np.array([True, False, True]))
        step = policy.act(obs[t], None if t == 0 else rewards[t - 1])
        actions.append(step.action.detach().cpu().numpy())
    return actions


@pytest.mark.parametrize(
    "spec",
    [CONTINUOUS, pytest.param(DISCRETE, marks=pytest.mark.slow)],
    ids=["box", "discrete"],
)
@pytest.mark.parametrize("name", NAMES)
def test_compiled_act_gives_the_eager_actions(name, spec):
    eager = _agent(name, spec)
    compiled = CompiledAgent(copy.deepcopy(eager), backend=BACKEND)
    obs, rewards = observation_stream(spec, steps=9, num_envs=3, seed=1)
    for options in _option_sets(name):
        try:
            reference = _rollout(eager.policy(3, **options), obs, rewards, seed=2)
        except ValueError:  # an option this configuration refuses (e.g. cache without window)
            continue
        got = _rollout(compiled.policy(3, **options), obs, rewards, seed=2)
        for t, (a, b) in enumerate(zip(reference, got)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=f"{options} step {t}")


STEADY = [
    ("dt", {}, {}),
    ("dt", {"attention_window": 3}, {"inference": "cache"}),
    ("bc", {"backbone": "gpt"}, {}),
    ("bc", {"backbone": "gtrxl"}, {}),
    ("q-transformer", {}, {}),
    ("recurrent-ppo", {"backbone": "gtrxl"}, {}),
    ("diffusion", {}, {}),
]
"""Agents whose compiled `act` must settle: the attention policies with caches and windows."""


@pytest.mark.parametrize(("name", "settings", "options"), STEADY, ids=lambda v: str(v or ""))
def test_compiled_act_stays_compiled_past_the_context_with_resets(name, settings, options):
    """320 steps (many contexts, episodes up to 307 steps long) with resets mid-batch: no frame
    reaches dynamo's recompile limit, after which it would run eagerly for good (a full GPT
    cache read up to its filled prefix recompiled at every new length), and the actions are
    the eager ones."""
    eager = _agent(name, CONTINUOUS, **settings)
    compiled = CompiledAgent(copy.deepcopy(eager), backend=BACKEND)
    obs, rewards = observation_stream(CONTINUOUS, steps=320, num_envs=3, seed=4)
    resets = {
        7: [True, False, False],
        13: [False, True, True],
        29: [True, False, True],
        150: [False, True, False],
        260: [True, False, False],
    }

    def rollout(policy) -> np.ndarray:
        torch.manual_seed(2)
        actions = []
        for t in range(len(obs)):
            if t in resets:
                policy.reset(np.array(resets[t]))
            step = policy.act(obs[t], None if t == 0 else rewards[t - 1])
            actions.append(step.action.detach().cpu().numpy())
        return np.stack(actions)

    torch._dynamo.reset()
    reference = rollout(eager.policy(3, **options))
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        got = rollout(compiled.policy(3, **options))
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_compiled_agent_updates_like_the_eager_one(name):
    """The update runs through the compiled model forward (dynamo captures graphs) and gives
    the eager loss and weights."""
    from torch._dynamo.utils import counters

    eager = _agent(name, CONTINUOUS, **exact_settings(name))
    compiled = CompiledAgent(copy.deepcopy(eager), backend="aot_eager")
    batch = REGISTRY[name].example_batch(eager, 0)
    torch.manual_seed(3)
    first = eager.update(batch)
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(3)
    second = compiled.update(batch)
    assert counters["stats"]["unique_graphs"] > 0, f"{name}: update never ran compiled code"
    assert second["train/loss"] == pytest.approx(first["train/loss"], rel=1e-5)
    assert compiled.state_dict()["model"].keys() == eager.state_dict()["model"].keys()
    for key, value in eager.model.state_dict().items():
        torch.testing.assert_close(compiled.model.state_dict()[key], value, rtol=0, atol=1e-6)


def test_unavailable_compiler_falls_back_to_the_eager_agent(monkeypatch):
    import seqrl.train.compiled as compiled_module

    agent = _agent("dt", CONTINUOUS)
    monkeypatch.setattr(compiled_module, "compile_available", lambda backend: "no compiler")
    lines = []
    assert compile_agent(agent, say=lines.append) is agent
    assert "running eagerly" in lines[0] and "no compiler" in lines[0]
    assert compile_available("no-such-backend") is not None


def test_attention_probe_names_the_kernel_and_keeps_the_rng():
    agent = _agent("dt", CONTINUOUS)
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    kernels = attention_kernels(agent.policy(1), np.zeros((1, 5), np.float32))
    assert torch.equal(torch.rand(3), before)
    assert kernels and all(k in ("flash (CPU)", "math") for k in kernels)
    assert attention_line(agent, (5,)).startswith("attention: ")
    lstm = _agent("recurrent-ppo", CONTINUOUS)
    assert attention_line(lstm, (5,)) == "attention: none (no attention in this policy)"


@pytest.mark.slow
def test_inductor_compiled_dt_act_gives_the_eager_actions():
    if compile_available("inductor") is not None:
        pytest.skip(f"inductor unavailable: {compile_available('inductor')}")
    eager = _agent("dt", CONTINUOUS)
    compiled = CompiledAgent(copy.deepcopy(eager), backend="inductor")
    obs, rewards = observation_stream(CONTINUOUS, steps=9, num_envs=3, seed=1)
    reference = _rollout(eager.policy(3), obs, rewards, seed=2)
    got = _rollout(compiled.policy(3), obs, rewards, seed=2)
    np.testing.assert_allclose(np.stack(got), np.stack(reference), rtol=1e-4, atol=1e-4)
