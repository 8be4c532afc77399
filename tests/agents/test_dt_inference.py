"""DT inference modes under user conditions: cache inference equals window inference (the
reference) over 300-step episodes with resets mid-batch, for every kind of configuration that
`DTConfig` accepts for it, at the trained model size (width 128); the others are refused.

Random initial weights (std 0.02) make attention nearly uniform, and a nearly uniform attention
hides the difference between a cache and a window: on the shipped K=40, W=20 preset it was
5.7e-7 at initialization but 4.5e-3 on the trained model. `_sharpen` multiplies the query, key
and value projections by 8 (attention scores by 64), which gives 1.1e-3 on that preset, while
the accepted configurations stay within 1e-6. GTrXL gets 5: its gates amplify float rounding
through the fed-back actions beyond that (1e-4 at 8, 0.2 at 12, 8e-7 at 5).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrl.agents.dt import DecisionTransformer, DTConfig, fast_bf16, uses_bf16
from tests.agents.helpers import CONTINUOUS, DISCRETE, observation_stream, random_window_batch

STEPS, ENVS = 300, 3
RESETS = {  # step -> envs that start a new episode there (before acting)
    97: np.array([False, True, False]),
    150: np.array([False, False, True]),
    151: np.array([False, True, False]),  # an episode of one step
    260: np.array([True, False, True]),
}


def _agent(spec=CONTINUOUS, **settings) -> DecisionTransformer:
    torch.manual_seed(0)
    base = {"width": 128, "layers": 3, "heads": 1, "precision": "fp32"}
    agent = DecisionTransformer(DTConfig(**{**base, **settings}), spec)
    _sharpen(agent, 5.0 if agent.config.backbone == "gtrxl" else 8.0)
    return agent


def _sharpen(agent: DecisionTransformer, gain: float) -> None:
    """Scale the query, key and value projections: attention scores grow by gain**2."""
    with torch.no_grad():
        for name, param in agent.model.backbone.named_parameters():
            if name.rsplit(".", 2)[-2] in ("qkv", "query", "key_value"):
                param.mul_(gain)
    agent.model.eval()


def _rollout(agent: DecisionTransformer, inference: str, spec=CONTINUOUS) -> torch.Tensor:
    """Model-unit predictions (STEPS, ENVS, A) of one policy over a fixed stream with resets."""
    obs, rewards = observation_stream(spec, STEPS, ENVS, seed=1)
    policy = agent.policy(ENVS, inference=inference, target_return=2500.0)
    predictions = []
    for t in range(STEPS):
        if t in RESETS:
            policy.reset(RESETS[t])
        policy.act(obs[t], None if t == 0 else rewards[t - 1])
        predictions.append(policy.last_prediction.clone())
    return torch.stack(predictions)


ACCEPTED = {  # every kind of configuration that cache inference accepts
    "gpt-preset": {"context_len": 40, "attention_window": 13},  # experiments/dt sliding preset
    "gpt-long": {"context_len": 60, "attention_window": 20},
    "gpt-boundary": {"context_len": 20, "attention_window": 10, "layers": 2},  # 58 == 58
    "gpt-heads": {"context_len": 20, "attention_window": 6, "heads": 4},
    "gtrxl": {"context_len": 20, "attention_window": 6, "backbone": "gtrxl"},
    "mlp": {"context_len": 20, "backbone": "mlp"},
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_cache_inference_equals_window_inference_over_long_episodes_with_resets(name):
    agent = _agent(**ACCEPTED[name])
    cache, window = _rollout(agent, "cache"), _rollout(agent, "window")
    torch.testing.assert_close(cache, window, rtol=1e-4, atol=2e-5)
    assert cache[:, 0].std(0).min() > 1e-2, "the actions must depend on the inputs"


def test_cache_inference_equals_window_inference_for_discrete_actions():
    agent = _agent(DISCRETE, context_len=20, attention_window=6)
    cache, window = _rollout(agent, "cache", DISCRETE), _rollout(agent, "window", DISCRETE)
    torch.testing.assert_close(cache, window, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize(
    ("settings", "short_context"),
    [
        ({"context_len": 60, "attention_window": 20}, 40),  # the old preset: K=40
        ({"context_len": 22, "attention_window": 11, "layers": 2}, 20),  # one step past the bound
    ],
    ids=["old-preset", "one-past-the-bound"],
)
def test_a_window_shorter_than_the_receptive_field_gives_other_actions(settings, short_context):
    """What the config check prevents: the cache of a model evaluated against the windows of
    a context one step too short differs from step K on (so the equality test above can fail)."""
    agent = _agent(**settings)
    cache = _rollout(agent, "cache")
    agent.config.context_len = short_context  # the window policy reads K from here
    window = _rollout(agent, "window")
    difference = (cache - window).abs().amax((1, 2))  # (STEPS,)
    assert difference[:short_context].max() < 2e-5  # within the first window: the same
    assert difference.max() > 2e-4  # 10x the equality test's tolerance


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"context_len": 40, "attention_window": 20},
            r"context_len >= 60 or .*attention_window <= 13",
        ),
        ({"context_len": 20, "attention_window": 11, "layers": 2}, r"context_len >= 22"),
        ({"context_len": 20, "attention_window": 7, "backbone": "gtrxl"}, r"attention_window <= 6"),
        ({"context_len": 2, "attention_window": 1, "layers": 6}, r"context_len >= 5\."),
        ({"context_len": 20, "attention_window": 5, "backbone": "lstm"}, "applies to the gpt"),
    ],
    ids=["old-preset", "gpt-past-bound", "gtrxl-past-bound", "no-window-fits", "lstm"],
)
def test_config_refuses_windows_whose_cache_is_not_the_trained_function(settings, message):
    with pytest.raises(ValueError, match=message):
        DTConfig(**settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, r"attention_window is None.*inference=window.*attention_window <= 6"),
        ({"backbone": "gtrxl"}, "attention_window is None"),
        ({"backbone": "lstm"}, "recurrent state"),
        ({"backbone": "gru"}, "recurrent state"),
        ({"backbone": "xlstm"}, "recurrent state"),
    ],
)
def test_cache_policy_is_refused_where_it_is_not_the_trained_function(settings, message):
    agent = DecisionTransformer(
        DTConfig(width=16, layers=3, context_len=20, **settings), CONTINUOUS
    )
    with pytest.raises(ValueError, match=f"policy.inference='cache' refused: .*{message}"):
        agent.policy(2, inference="cache")
    agent.policy(2, inference="window")  # the reference mode is always available


def test_gtrxl_memory_defaults_to_the_context_window_not_max_timestep():
    plain = DecisionTransformer(DTConfig(width=16, context_len=20, backbone="gtrxl"), CONTINUOUS)
    assert plain.model.backbone.config.memory == 3 * 20 - 1
    windowed = DTConfig(width=16, context_len=20, attention_window=6, backbone="gtrxl")
    assert DecisionTransformer(windowed, CONTINUOUS).model.backbone.config.memory == 3 * 6 - 1


@pytest.mark.parametrize("backbone", ["gpt", "gtrxl", "lstm"])
def test_state_token_outputs_only_give_the_same_predictions_and_gradients(backbone, monkeypatch):
    """The last layer computes the state tokens only (`select`): same loss, same gradients as
    computing every token and slicing (forced through `seqrl.nn.base.selects`)."""
    import seqrl.nn.base

    torch.manual_seed(0)
    config = DTConfig(width=32, layers=2, heads=2, context_len=6, dropout=0.0, backbone=backbone,
                      precision="fp32")  # fmt: skip
    agent = DecisionTransformer(config, CONTINUOUS)
    batch = random_window_batch(CONTINUOUS, context=6, seed=3)  # one row left-padded
    model = agent.model.train()
    actions = model.normalize_actions(batch.actions)
    assert seqrl.nn.base.selects(model.backbone) == (backbone != "lstm")
    outputs, grads = [], []
    for forced_slicing in (False, True):
        if forced_slicing:
            monkeypatch.setattr(seqrl.nn.base, "selects", lambda backbone: False)
        model.zero_grad()
        out = model(batch.observations, actions, batch.returns_to_go, batch.timesteps, batch.mask)
        out[batch.mask].square().sum().backward()
        outputs.append(out[batch.mask].detach())
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_precision_auto_uses_bf16_for_updates_only_where_the_cpu_has_it(monkeypatch, tmp_path):
    detect = fast_bf16.__wrapped__
    for flags, expected in (("avx2 avx512f avx512_bf16", True), ("avx2 amx_bf16", True),
                            ("avx2 avx512f avx512_vnni", False)):  # fmt: skip
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor : 0\nflags : {flags}\n")
        monkeypatch.setattr("seqrl.agents.dt.Path", lambda _, path=cpuinfo: path)
        assert detect("cpu") is expected, flags
    assert detect("mps") is False
    cpu = torch.device("cpu")
    auto, bf16, fp32 = DTConfig(), DTConfig(precision="bf16"), DTConfig(precision="fp32")
    assert auto.precision == "auto"
    assert uses_bf16(auto, cpu) is fast_bf16("cpu")
    assert uses_bf16(auto, cpu, rollout=True) is False  # rollouts stay fp32
    assert uses_bf16(bf16, cpu, rollout=True) and not uses_bf16(fp32, cpu)
