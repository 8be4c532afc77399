"""Pieces that sit between a network and an action space: `ActionScaling`.

Policies for bounded continuous actions work in *model units*: the box [low, high] of each
bounded dimension is mapped affinely onto [-1, 1] (tanh-squashed outputs, Gaussian means, regression
targets). Unbounded dimensions (bound None or infinite) are left in env units. One helper does the
mapping both ways, so an agent's loss, its policy and its exported model agree on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ActionScaling(nn.Module):
    """Map actions between env units and model units, per action dimension.

        bounded dim i (finite low_i and high_i):   model = (env - center_i) / half_range_i
            center_i = (high_i + low_i) / 2,  half_range_i = (high_i - low_i) / 2
            so env low_i -> model -1, env high_i -> model +1
        unbounded dim i (a bound None or +-inf):   model = env  (center 0, half range 1)

    `low` / `high` are sequences of A floats (or None for "unbounded in every dimension"); an
    entry may be None or non-finite. Buffers (saved in the state dict, moved with `.to()`):
    `center` (A,) float32, `half_range` (A,) float32, `bounded` (A,) bool.
    """

    center: Tensor
    half_range: Tensor
    bounded: Tensor

    def __init__(
        self,
        action_dim: int,
        low: Sequence[float | None] | None = None,
        high: Sequence[float | None] | None = None,
    ) -> None:
        super().__init__()
        if action_dim < 1:
            raise ValueError(f"ActionScaling: action_dim must be >= 1; got {action_dim}.")
        lows = _bounds("low", low, action_dim)
        highs = _bounds("high", high, action_dim)
        per_dim = [_dim_scaling(i, lo, hi) for i, (lo, hi) in enumerate(zip(lows, highs))]
        center, half_range, bounded = zip(*per_dim, strict=True)
        self.action_dim = action_dim
        self.register_buffer("center", torch.tensor(list(center), dtype=torch.float32))  # (A,)
        self.register_buffer(
            "half_range", torch.tensor(list(half_range), dtype=torch.float32)
        )  # (A,)
        self.register_buffer("bounded", torch.tensor(list(bounded), dtype=torch.bool))  # (A,)

    def to_model(self, env_actions: Tensor) -> Tensor:
        """(..., A) env units -> (..., A) model units: bounded dims map [low, high] to [-1, 1]."""
        self._check(env_actions, "env_actions")
        return (env_actions - self.center) / self.half_range  # (..., A)

    def to_env(self, model_actions: Tensor, clip: bool = False) -> Tensor:
        """(..., A) model units -> (..., A) env units.

        With `clip`, bounded dims are clamped to [-1, 1] first (so the result lies in
        [low, high]); unbounded dims are never clamped.
        """
        self._check(model_actions, "model_actions")
        if clip:
            clamped = model_actions.clamp(-1.0, 1.0)
            model_actions = torch.where(self.bounded, clamped, model_actions)  # (..., A)
        return model_actions * self.half_range + self.center  # (..., A)

    def _check(self, actions: Tensor, name: str) -> None:
        if actions.dim() == 0 or actions.shape[-1] != self.action_dim:
            raise ValueError(
                f"ActionScaling: {name} must have shape (..., {self.action_dim}) "
                f"(action_dim={self.action_dim}); got {tuple(actions.shape)}."
            )

    def extra_repr(self) -> str:
        return f"action_dim={self.action_dim}, bounded={int(self.bounded.sum())}"


def _dim_scaling(dim: int, low: float | None, high: float | None) -> tuple[float, float, bool]:
    """(center, half_range, bounded) of one action dimension."""
    if low is None or high is None:
        return 0.0, 1.0, False
    if not high > low:
        raise ValueError(
            f"ActionScaling: action dim {dim} has low={low} >= high={high}; every bounded "
            "dimension needs low < high (pass None or inf for an unbounded one)."
        )
    return (high + low) / 2, (high - low) / 2, True


def _bounds(
    name: str, values: Sequence[float | None] | None, action_dim: int
) -> list[float | None]:
    """`values` as A floats, with None for every missing or non-finite bound."""
    if values is None:
        return [None] * action_dim
    values = list(values)
    if len(values) != action_dim:
        raise ValueError(
            f"ActionScaling: {name} has {len(values)} entries but action_dim={action_dim}; "
            f"pass one bound per action dimension (None for unbounded)."
        )
    return [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]
