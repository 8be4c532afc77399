"""Decision Transformer: rollouts match the reference get_action; cache inference equals window
inference wherever the config allows it, and is refused elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrl.agents.dt import DecisionTransformer, DTConfig, DTPolicyOptions
from tests.agents.helpers import CONTINUOUS, DISCRETE, observation_stream, random_window_batch


def _trained_agent(spec=CONTINUOUS, steps=3, **overrides):
    torch.manual_seed(0)
    settings = {"width": 16, "layers": 3, "heads": 2, "context_len": 5, "precision": "fp32"}
    config = DTConfig(warmup_steps=1, **{**settings, **overrides})
    stats = {"observation_mean": np.full(5, 0.3), "observation_std": np.full(5, 2.0)}
    agent = DecisionTransformer(config, spec, stats)
    for seed in range(steps):
        agent.update(random_window_batch(spec, context=config.context_len, seed=seed))
    agent.model.eval()
    return agent


def reference_get_action(model, states, actions, returns_to_go, timesteps, context_len):
    """The official DT `get_action`: left-pad the last K steps and run the whole window."""
    states = torch.as_tensor(np.array(states))[-context_len:][None]  # (1, T, obs)
    actions = torch.stack(actions)[-context_len:][None]  # (1, T, A)
    rtg = torch.tensor(returns_to_go, dtype=torch.float32)[-context_len:][None]  # (1, T)
    steps = torch.tensor(timesteps)[-context_len:][None]  # (1, T)
    length, pad = states.shape[1], context_len - states.shape[1]
    mask = torch.cat([torch.zeros(pad), torch.ones(length)]).bool()[None]
    states = torch.cat([torch.zeros(1, pad, states.shape[-1]), states], dim=1)
    actions = torch.cat([torch.zeros(1, pad, actions.shape[-1]), actions], dim=1)
    rtg = torch.cat([torch.zeros(1, pad), rtg], dim=1)
    steps = torch.cat([torch.zeros(1, pad, dtype=torch.long), steps], dim=1)
    return model(states, actions, rtg, steps, mask)[0, -1]


def test_window_policy_matches_reference_get_action_on_long_episodes():
    agent = _trained_agent()
    model, scale, target = agent.model, agent.config.return_scale, 3.0 * agent.config.return_scale
    steps, num_envs = 13, 3  # longer than K = 5
    obs, rewards = observation_stream(CONTINUOUS, steps, num_envs, seed=4)
    policy = agent.policy(num_envs=num_envs, target_return=target, inference="window")
    policy.reset()
    batched = [policy.act(obs[t], None if t == 0 else rewards[t - 1]).action for t in range(steps)]
    for env in range(num_envs):
        states, actions, rtg, timesteps = [], [], [target / scale], []
        for t in range(steps):
            if t > 0:
                rtg.append(rtg[-1] - rewards[t - 1, env] / scale)
            states.append(obs[t, env])
            actions.append(torch.zeros(2))
            timesteps.append(t)
            with torch.no_grad():
                prediction = reference_get_action(model, states, actions, rtg, timesteps, 5)
            actions[-1] = prediction
            expected = model.to_env_action(prediction[None])[0]
            torch.testing.assert_close(batched[t][env], expected, rtol=1e-5, atol=1e-5)


def test_target_return_conditions_the_actions():
    agent = _trained_agent()
    obs, _ = observation_stream(CONTINUOUS, 1, 1)
    low = agent.policy(num_envs=1, target_return=0.0).act(obs[0]).action
    high = agent.policy(num_envs=1, target_return=5000.0).act(obs[0]).action
    assert not torch.allclose(low, high)


def test_policy_rejects_wrong_number_of_envs():
    agent = _trained_agent()
    policy = agent.policy(num_envs=2)
    with pytest.raises(ValueError, match="built for 2 envs"):
        policy.act(np.zeros((3, 5), dtype=np.float32))


def test_policy_options_reject_unknown_inference_mode_and_unknown_names():
    with pytest.raises(ValueError, match="inference must be"):
        DTPolicyOptions(inference="fast")
    agent = _trained_agent(steps=0)
    with pytest.raises(ValueError, match="inference must be"):
        agent.policy(2, inference="fast")
    with pytest.raises(ValueError, match=r"did you mean policy\.target_return"):
        agent.policy(2, target_retrun=10.0)
    assert agent.policy(2, target_return="1800").target_return == 1800.0  # converted


def test_dt_learns_a_state_dependent_action_mapping():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(4, 3)).astype(np.float32)
    config = DTConfig(
        width=32, layers=2, heads=2, context_len=4, dropout=0.0, warmup_steps=10, lr=1e-3
    )
    agent = DecisionTransformer(config, DISCRETE)

    def batch(seed):
        b = random_window_batch(DISCRETE, batch=32, context=4, seed=seed)
        b.actions = torch.as_tensor(b.observations.numpy() @ weights).argmax(-1)  # (B, K)
        return b

    first = agent.update(batch(0))["train/loss"]
    for seed in range(1, 300):
        last = agent.update(batch(seed))
    assert last["train/loss"] < 0.5 * first
    assert last["train/action_accuracy"] > 0.8


def test_bf16_autocast_update_tracks_fp32_and_rollouts_stay_fp32_shaped():
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        config = DTConfig(
            width=32, layers=2, heads=2, context_len=5, dropout=0.0, precision=precision,
            attention_window=2,
        )  # fmt: skip
        agent = DecisionTransformer(config, CONTINUOUS)
        losses[precision] = [
            agent.update(random_window_batch(CONTINUOUS, context=5, seed=s))["train/loss"]
            for s in range(5)
        ]
        action = (
            agent.policy(num_envs=2, inference="cache").act(np.zeros((2, 5), np.float32)).action
        )
        assert action.dtype == torch.float32 and torch.isfinite(action).all()
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=0.05)
    assert losses["bf16"] != losses["fp32"], "autocast must actually change the arithmetic"
    with pytest.raises(ValueError, match="precision must be"):
        DTConfig(precision="fp16")


def test_timestep_embedding_init_std_is_configurable():
    small = DecisionTransformer(DTConfig(width=32, layers=1), CONTINUOUS).model.embed_timestep
    default = DecisionTransformer(
        DTConfig(width=32, layers=1, timestep_init_std=None), CONTINUOUS
    ).model.embed_timestep
    assert abs(small.weight.std().item() - 0.02) < 0.002
    assert abs(default.weight.std().item() - 1.0) < 0.05
