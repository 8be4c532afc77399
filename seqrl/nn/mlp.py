"""A memoryless MLP with the sequence-backbone interface: the no-memory baseline.

Every token goes through the same `layers` x (Linear(D, D), activation[, Dropout]) on its own,
as in the actor and critic torsos of CleanRL's PPO (tanh). Nothing flows between tokens, so the
parallel forward and `step` are trivially the same function, `mask` and `episode_start` change
nothing (they are still checked), and the state is the empty dict `{}`: a rollout buffer or an
exporter that handles any backbone's state handles this one without a special case.

Outputs at padded positions (`mask` False) are computed like any other; callers ignore them.
Parameters are created in the order Linear_0, Linear_1, ... inside `net` (an `nn.Sequential`), so
a model that built `nn.Sequential(Linear, Tanh, ...)` by hand gets the same initial weights and
the same state-dict keys from `MLPBackbone(MLPConfig(width, layers))` under the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqrl.nn.base import ACTIVATIONS, State, check_inputs


@dataclass
class MLPConfig:
    width: int = 64
    """D: token width (inputs, hidden layers and outputs)."""
    layers: int = 2
    """Number of (Linear, activation) layers."""
    dropout: float = 0.0
    """Dropout after every activation (inactive in eval()); 0 adds no module at all."""
    activation: str = "tanh"
    """Activation after every Linear: one of tanh, gelu, gelu_tanh, relu, silu."""

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"MLP: layers must be >= 1; got {self.layers}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"MLP: activation must be one of {sorted(ACTIVATIONS)}; got {self.activation!r}."
            )


class MLPBackbone(nn.Module):
    """Per-token MLP over (B, T, D) tokens with state `{}`; see the module docstring."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        self.width = config.width
        blocks: list[nn.Module] = []
        for _ in range(config.layers):
            blocks += [nn.Linear(config.width, config.width), ACTIVATIONS[config.activation]()]
            if config.dropout > 0:
                blocks.append(nn.Dropout(config.dropout))
        self.net = nn.Sequential(*blocks)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The empty state `{}` (there is nothing to remember)."""
        return {}

    def reset_state(self, state: State, done: Tensor) -> State:
        """`{}`: there is nothing to reset. `done` must still be a (B,) tensor."""
        _check_state(state)
        if torch.as_tensor(done).dim() != 1:
            raise ValueError(
                f"done must have shape (B,); got {tuple(torch.as_tensor(done).shape)}."
            )
        return {}

    def forward(
        self,
        x: Tensor,
        state: State | None = None,
        mask: Tensor | None = None,
        episode_start: Tensor | None = None,
        *,
        return_state: bool = True,
    ) -> tuple[Tensor, State | None]:
        """x (B, T, D) -> y (B, T, D), token by token; the state stays `{}`."""
        check_inputs("MLPBackbone", x, self.width, mask, episode_start)
        if state is not None:
            _check_state(state)
        return self.net(x), {} if return_state else None  # (B, T, D)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, n, D) -> y (B, n, D): the same per-token function as `forward`."""
        check_inputs("MLPBackbone", x, self.width, None, None)
        _check_state(state)
        return self.net(x), {}  # (B, n, D)


def _check_state(state: State) -> None:
    if state:
        raise ValueError(
            f"MLPBackbone: the state of a memoryless backbone is {{}}; got keys {sorted(state)}. "
            "Build it with MLPBackbone.initial_state(batch_size) (a state of another backbone "
            "does not fit)."
        )
