"""The MLP backbone: what the shared contract battery cannot see (layout, options, state {})."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seqrl.nn import MLPBackbone, MLPConfig, make_backbone


def test_mlp_initialises_like_a_hand_built_linear_tanh_stack() -> None:
    # Agents that built `nn.Sequential(Linear, Tanh, ...)` as `net` switch without new numbers.
    torch.manual_seed(3)
    reference = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
    torch.manual_seed(3)
    model = make_backbone("mlp", width=8, layers=2, heads=4, window=3, max_len=5)
    expected = {f"net.{key}": value for key, value in reference.state_dict().items()}
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(model(x)[0], reference(x), atol=0, rtol=0)


def test_mlp_applies_its_activation_per_token() -> None:
    model = MLPBackbone(MLPConfig(width=4, layers=1, activation="relu"))
    x = torch.randn(3, 6, 4)
    y, state = model(x)
    assert state == {}
    assert (y >= 0).all()
    torch.testing.assert_close(y[1, 4], model.net(x[1, 4]))


def test_mlp_dropout_is_active_only_in_training() -> None:
    model = make_backbone("mlp", width=32, layers=1, dropout=0.5)
    x = torch.randn(2, 3, 32)
    assert any(isinstance(m, nn.Dropout) for m in model.net)
    linear = model.net[0]
    torch.testing.assert_close(model.eval()(x)[0], torch.tanh(linear(x)))  # eval: no dropout
    torch.manual_seed(0)
    assert not torch.equal(model.train()(x)[0], torch.tanh(linear(x)))
    plain = make_backbone("mlp", width=32, layers=1)
    assert not any(isinstance(m, nn.Dropout) for m in plain.net)


def test_mlp_state_is_empty_and_a_foreign_state_is_rejected() -> None:
    model = make_backbone("mlp", width=4, layers=1)
    assert model.initial_state(5) == {}
    x = torch.randn(2, 3, 4)
    assert model.step(x, {})[1] == {}
    assert model.reset_state({}, torch.tensor([True, False])) == {}
    foreign = make_backbone("gru", width=4, layers=1).initial_state(2)
    with pytest.raises(ValueError, match="memoryless"):
        model.step(x, foreign)
    with pytest.raises(ValueError, match="memoryless"):
        model(x, foreign)


def test_mlp_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="layers"):
        MLPConfig(width=4, layers=0)
    with pytest.raises(ValueError, match="activation"):
        MLPConfig(width=4, layers=1, activation="swishy")
