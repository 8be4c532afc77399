"""LSTM and GRU backbones with the sequence-backbone interface.

Hochreiter & Schmidhuber, 1997 (LSTM); Cho et al., 2014 (GRU); both through `torch.nn.LSTM` /
`torch.nn.GRU` (cuDNN on GPUs), stacked `layers` deep at width D in and out.

What the wrapper adds, as in Stable-Baselines3's RecurrentPPO: `episode_start` resets the state of
a row right before the token where a new episode begins, and a padded token (`mask` False) leaves
the state unchanged, so one parallel forward over a chunk that spans episode ends equals stepping
with `reset_state`. Without masks or episode starts the whole chunk is one fused call; with them
the forward runs token by token (only those chunks pay for the loop).

State: {"h": (B, L, D)} for the GRU, plus {"c": (B, L, D)} for the LSTM (batch first; transposed
to PyTorch's (L, B, D) internally). Outputs at padded positions are the unchanged top-layer h.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqrl.nn.base import State, as_done, check_inputs, check_state, detach_state, zero_rows

CELLS = ("lstm", "gru")


@dataclass
class RecurrentConfig:
    width: int = 128
    """D: token width (inputs, hidden state and outputs)."""
    layers: int = 1
    """Stacked recurrent layers."""
    cell: str = "lstm"
    """lstm or gru."""
    dropout: float = 0.0
    """Dropout between stacked layers (inactive in eval(); no effect with one layer)."""

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"recurrent cell must be one of {CELLS}; got {self.cell!r}.")
        if self.layers < 1:
            raise ValueError(f"recurrent layers must be >= 1; got {self.layers}.")


class RecurrentBackbone(nn.Module):
    """A stacked LSTM or GRU over (B, T, D) tokens; see the module docstring."""

    def __init__(self, config: RecurrentConfig) -> None:
        super().__init__()
        self.config = config
        self.width = config.width
        rnn = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.rnn = rnn(
            config.width,
            config.width,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.keys = ("h", "c") if config.cell == "lstm" else ("h",)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zero recurrent state: {"h": (B, L, D)} (+ {"c": (B, L, D)} for the LSTM)."""
        param = next(self.rnn.parameters())
        device = param.device if device is None else device
        shape = (batch_size, self.config.layers, self.width)
        return {key: torch.zeros(shape, dtype=param.dtype, device=device) for key in self.keys}

    def reset_state(self, state: State, done: Tensor) -> State:
        """Zero the rows where done (B,) is True (returns new tensors)."""
        return zero_rows(state, as_done(done, state["h"].shape[0], state["h"].device))

    def forward(
        self,
        x: Tensor,
        state: State | None = None,
        mask: Tensor | None = None,
        episode_start: Tensor | None = None,
        *,
        return_state: bool = True,
    ) -> tuple[Tensor, State | None]:
        """x (B, T, D) -> y (B, T, D) and the state after the last real token (detached)."""
        check_inputs(type(self).__name__, x, self.width, mask, episode_start)
        if state is None:
            state = self.initial_state(x.shape[0], x.device)
        check_state(type(self).__name__, state, x.shape[0], self.keys)
        if mask is None and episode_start is None:
            y, hidden = self.rnn(x, self._to_torch(state))
            new_state = self._from_torch(hidden)
        else:
            y, new_state = self._loop(x, state, mask, episode_start)
        return y, detach_state(new_state) if return_state else None

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, n, D) -> y (B, n, D): advance the recurrent state by n tokens."""
        check_inputs(type(self).__name__, x, self.width, None, None)
        check_state(type(self).__name__, state, x.shape[0], self.keys)
        y, hidden = self.rnn(x, self._to_torch(state))
        return y, self._from_torch(hidden)

    def _loop(
        self, x: Tensor, state: State, mask: Tensor | None, episode_start: Tensor | None
    ) -> tuple[Tensor, State]:
        outputs = []
        for t in range(x.shape[1]):
            if episode_start is not None:
                state = zero_rows(state, episode_start[:, t])
            y, hidden = self.rnn(x[:, t : t + 1], self._to_torch(state))  # y: (B, 1, D)
            stepped = self._from_torch(hidden)
            if mask is not None:
                keep = mask[:, t, None, None]  # (B, 1, 1)
                stepped = {key: torch.where(keep, stepped[key], state[key]) for key in state}
                y = torch.where(keep, y, state["h"][:, -1:])
            state = stepped
            outputs.append(y)
        return torch.cat(outputs, 1), state  # (B, T, D)

    def _to_torch(self, state: State) -> Tensor | tuple[Tensor, Tensor]:
        # PyTorch wants (L, B, D) and contiguous memory for the fused kernels.
        hidden = [state[key].transpose(0, 1).contiguous() for key in self.keys]
        return (hidden[0], hidden[1]) if len(hidden) == 2 else hidden[0]

    def _from_torch(self, hidden: Tensor | tuple[Tensor, Tensor]) -> State:
        tensors = hidden if isinstance(hidden, tuple) else (hidden,)
        return {key: t.transpose(0, 1) for key, t in zip(self.keys, tensors, strict=True)}


class LSTM(RecurrentBackbone):
    """Stacked LSTM backbone: `LSTM(width, layers)`; state {"h", "c"}: (B, L, D)."""

    def __init__(self, width: int, layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__(RecurrentConfig(width=width, layers=layers, cell="lstm", dropout=dropout))


class GRU(RecurrentBackbone):
    """Stacked GRU backbone: `GRU(width, layers)`; state {"h"}: (B, L, D)."""

    def __init__(self, width: int, layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__(RecurrentConfig(width=width, layers=layers, cell="gru", dropout=dropout))
