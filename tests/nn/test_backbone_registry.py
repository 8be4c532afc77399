"""make_backbone: names, errors, and how the shared arguments map onto each backbone."""

from __future__ import annotations

import pytest

from seqrl.nn import BACKBONES, GPT, XLSTM, GTrXL, MLPBackbone, RecurrentBackbone, make_backbone


def test_every_registered_name_builds_a_backbone_of_that_width() -> None:
    expected = {
        "gpt": GPT,
        "gtrxl": GTrXL,
        "lstm": RecurrentBackbone,
        "gru": RecurrentBackbone,
        "xlstm": XLSTM,
        "mlp": MLPBackbone,
    }
    assert set(BACKBONES) == set(expected)
    for name in BACKBONES:
        model = make_backbone(name, width=16, layers=2, heads=2)
        assert isinstance(model, expected[name])
        assert model.width == 16


def test_unknown_backbone_name_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="gpt, gtrxl, lstm, gru, xlstm, mlp"):
        make_backbone("transformer", width=16, layers=1)


def test_unknown_option_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="slstm_at"):
        make_backbone("gpt", width=16, layers=1, slstm_at=(0,))


def test_shared_options_are_accepted_by_every_backbone() -> None:
    # Agents pass one set of options whatever the backbone; only options that apply are used.
    for name in BACKBONES:
        make_backbone(name, width=16, layers=2, heads=2, window=4, max_len=8, activation="silu")
    assert make_backbone("gpt", width=16, layers=1, activation="relu").config.activation == "relu"
    assert make_backbone("gtrxl", width=16, layers=1, activation="gelu").config.activation == "gelu"
    assert make_backbone("mlp", width=16, layers=1).config.activation == "tanh"
    assert make_backbone("mlp", width=16, layers=1, activation="relu").config.activation == "relu"
    with pytest.raises(ValueError, match="activation"):
        make_backbone("gpt", width=16, layers=1, activation="swishy")


def test_window_means_attention_window_for_gpt_and_memory_for_gtrxl() -> None:
    gpt = make_backbone("gpt", width=16, layers=1, window=8)
    assert gpt.config.window == 8 and gpt.initial_state(2)["k.0"].shape[2] == 8
    assert (
        make_backbone("gpt", width=16, layers=1, max_len=32).initial_state(2)["k.0"].shape[2] == 32
    )
    assert make_backbone("gtrxl", width=16, layers=1, window=8).config.memory == 8
    assert make_backbone("gtrxl", width=16, layers=1, max_len=32).config.memory == 32
    assert make_backbone("xlstm", width=16, layers=2, slstm_at=(1,)).config.slstm_at == (1,)
    assert make_backbone("gru", width=16, layers=3).initial_state(2).keys() == {"h"}
