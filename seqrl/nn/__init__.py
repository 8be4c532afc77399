"""Sequence backbones and network pieces with no RL semantics (tensors in, tensors out).

Every backbone is an `nn.Module` with one interface, two faces computing the same function:

    y, state = backbone(x, state=None, mask=None, episode_start=None)  # (B, T, D) -> (B, T, D)
    y, state = backbone.step(x_new, state)                              # (B, n, D), n >= 1
    state = backbone.initial_state(batch_size, device)
    state = backbone.reset_state(state, done)                           # done (B,) bool
    backbone.width                                                      # D

`mask` (B, T) bool is True for real tokens (padding is skipped by attention and recurrence alike);
`episode_start` (B, T) bool blocks all information flow across the start of a new episode. A
state is a `dict[str, Tensor]`, batch dimension first; the state returned by the parallel forward
is the state after the last real token, detached. See README_SECTION.md for the details.

`make_backbone(name, ...)` builds one by name: "gpt", "gtrxl", "lstm", "gru", "xlstm", and "mlp"
(memoryless, state `{}`: the no-memory baseline).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from torch import nn

from seqrl.nn.base import Backbone, State
from seqrl.nn.gpt import GPT, GPTConfig
from seqrl.nn.gtrxl import GTrXL, GTrXLConfig
from seqrl.nn.mlp import MLPBackbone, MLPConfig
from seqrl.nn.optim import optimizer_step
from seqrl.nn.recurrent import GRU, LSTM, RecurrentBackbone, RecurrentConfig
from seqrl.nn.xlstm import XLSTM, XLSTMConfig

BACKBONES: tuple[str, ...] = ("gpt", "gtrxl", "lstm", "gru", "xlstm", "mlp")


def _config(cls: type, name: str, kwargs: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(
            f"make_backbone({name!r}): unknown options {unknown}; "
            f"{cls.__name__} accepts {sorted(known)}."
        )
    return cls(**kwargs)


def make_backbone(
    name: str,
    width: int,
    layers: int,
    heads: int = 1,
    dropout: float = 0.0,
    window: int | None = None,
    max_len: int = 1024,
    activation: str | None = None,
    **kw: Any,
) -> nn.Module:
    """Build a backbone by name; `kw` goes to its config dataclass.

    The shared arguments (`heads`, `window`, `max_len`, `activation`) may be passed for every
    name; a backbone they do not apply to ignores them, so agents can pass one set for all.
    - "gpt": `window` = sliding attention window W (None = full causal over `max_len` tokens);
      `activation` = MLP activation (default gelu).
    - "gtrxl": memory M = `window` (None = `max_len`): each token sees itself and M before it;
      `activation` = MLP hidden activation (default relu).
    - "lstm", "gru": `heads`, `window`, `max_len` and `activation` are ignored.
    - "xlstm": `slstm_at=(i, ...)` picks the sLSTM blocks (others are mLSTM); `window`,
      `max_len` and `activation` are ignored.
    - "mlp": `layers` x (Linear, `activation`) per token (default tanh); `heads`, `window` and
      `max_len` are ignored.
    """
    common = {"width": width, "layers": layers, "dropout": dropout}
    mlp = {"activation": activation} if activation is not None else {}
    if name == "gpt":
        args = {**common, "heads": heads, "window": window, "max_len": max_len, **mlp, **kw}
        return GPT(_config(GPTConfig, name, args))
    if name == "gtrxl":
        memory = window if window is not None else max_len
        args = {**common, "heads": heads, "memory": memory, **mlp, **kw}
        return GTrXL(_config(GTrXLConfig, name, args))
    if name in ("lstm", "gru"):
        return RecurrentBackbone(_config(RecurrentConfig, name, {**common, "cell": name, **kw}))
    if name == "xlstm":
        return XLSTM(_config(XLSTMConfig, name, {**common, "heads": heads, **kw}))
    if name == "mlp":
        return MLPBackbone(_config(MLPConfig, name, {**common, **mlp, **kw}))
    raise ValueError(f"unknown backbone {name!r}; valid names are {', '.join(BACKBONES)}.")


__all__ = [
    "BACKBONES",
    "GPT",
    "GRU",
    "LSTM",
    "XLSTM",
    "Backbone",
    "GPTConfig",
    "GTrXL",
    "GTrXLConfig",
    "MLPBackbone",
    "MLPConfig",
    "RecurrentBackbone",
    "RecurrentConfig",
    "State",
    "XLSTMConfig",
    "make_backbone",
    "optimizer_step",
]
