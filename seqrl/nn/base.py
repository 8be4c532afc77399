"""What every sequence backbone shares: the state type, input checks and token bookkeeping.

A backbone's state is a `dict[str, Tensor]` whose tensors all have the batch dimension first, so
a rollout buffer can store it, index rows of it and stack it without knowing the backbone, and an
exported model can take it as named inputs and outputs. `reset_state` zeroes rows: for every
backbone here the all-zeros row *is* the fresh state (GPT: cache position 0; GTrXL: memory length
0; LSTM/GRU/xLSTM: zero recurrent tensors, including the xLSTM stabilizer `m = 0`).

Token bookkeeping: a chunk of T tokens may contain padding (`mask` False) and episode starts.
`segment_ids` numbers the episodes inside a chunk (segment 0 continues the incoming state);
`token_positions` counts, for every token, how many *real* tokens of its own episode precede it,
so a padded token is invisible to everything (attention windows, relative distances, recurrence)
and a parallel forward equals stepping over the real tokens only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

State = dict[str, Tensor]
"""A backbone state: named tensors, batch dimension first."""

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU("tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
"""Activations by name (the MLPs of GPT and GTrXL blocks; the layers of the MLP backbone)."""


@runtime_checkable
class Backbone(Protocol):
    """The interface of every backbone in `seqrl.nn` (see the package docstring)."""

    width: int

    def __call__(
        self,
        x: Tensor,
        state: State | None = None,
        mask: Tensor | None = None,
        episode_start: Tensor | None = None,
    ) -> tuple[Tensor, State]: ...

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]: ...

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State: ...

    def reset_state(self, state: State, done: Tensor) -> State: ...


def check_inputs(
    name: str, x: Tensor, width: int, mask: Tensor | None, episode_start: Tensor | None
) -> None:
    """Raise a `ValueError` naming the argument when shapes or dtypes do not fit (B, T, D)."""
    if x.dim() != 3 or x.shape[-1] != width:
        raise ValueError(
            f"{name}: x must have shape (B, T, {width}) (width={width}); got {tuple(x.shape)}. "
            "Project inputs to the backbone width first."
        )
    for arg, value in (("mask", mask), ("episode_start", episode_start)):
        if value is None:
            continue
        if value.shape != x.shape[:2]:
            raise ValueError(
                f"{name}: {arg} must have shape (B, T) = {tuple(x.shape[:2])}; "
                f"got {tuple(value.shape)}."
            )
        if value.dtype != torch.bool:
            raise ValueError(f"{name}: {arg} must be a bool tensor; got dtype {value.dtype}.")


def check_state(name: str, state: State, batch_size: int, keys: tuple[str, ...]) -> None:
    """Raise a `ValueError` when `state` is not a state of this backbone for B rows."""
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(
            f"{name}: state is missing keys {missing} (has {sorted(state)}); "
            f"build it with {name}.initial_state(batch_size, device)."
        )
    rows = state[keys[0]].shape[0]
    if rows != batch_size:
        raise ValueError(f"{name}: state has {rows} rows but x has batch size {batch_size}.")


def as_done(done: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """`done` as a (B,) bool tensor on `device`, or a `ValueError` naming the shape."""
    done = torch.as_tensor(done, device=device)
    if done.shape != (batch_size,):
        raise ValueError(f"done must have shape ({batch_size},); got {tuple(done.shape)}.")
    return done.bool()


def selects(backbone: nn.Module) -> bool:
    """Whether a backbone computes outputs for chosen tokens only (`select=` in its forward and
    step; its class sets `selects_tokens = True`: gpt and gtrxl run the last block's queries,
    attention and MLP there). A plain attribute, so `torch.compile` traces it as a constant."""
    return bool(getattr(backbone, "selects_tokens", False))


def forward_selected(
    backbone: nn.Module, x: Tensor, select: slice | Tensor, **kwargs: Any
) -> tuple[Tensor, Any]:
    """`backbone(x, **kwargs)` with outputs (B, T', D) at the `select`ed tokens only: computed
    only there where the backbone supports it (`selects`), else sliced. Exact either way."""
    if selects(backbone):
        return backbone(x, select=select, **kwargs)
    hidden, state = backbone(x, **kwargs)
    return hidden[:, select], state


def zero_rows(state: State, done: Tensor, *, in_place: bool = False) -> State:
    """Zero the rows of every state tensor where `done` (B,) is True.

    In place, only the done rows are written (`index_fill_`): a GPT cache at 100 envs is 12 MB,
    and a `masked_fill_` over all of it cost 0.5 ms per reset where one or two envs ended.
    """
    if in_place:
        rows = done.nonzero().squeeze(1)
        return {key: tensor.index_fill_(0, rows, 0) for key, tensor in state.items()}
    out = {}
    for key, tensor in state.items():
        out[key] = tensor.masked_fill(done.view((-1,) + (1,) * (tensor.dim() - 1)), 0)
    return out


def detach_state(state: State) -> State:
    """The state with no autograd history: the boundary of truncated backpropagation."""
    return {key: tensor.detach() for key, tensor in state.items()}


def segment_ids(episode_start: Tensor) -> Tensor:
    """(B, T) long: 0 for tokens continuing the incoming state, k after the k-th episode start."""
    return episode_start.long().cumsum(1)  # (B, T)


def running_max_nonnegative(values: Tensor) -> Tensor:
    """(B, T) running maximum along T of non-negative `values` (B, T).

    `cummax` in eager mode; while tracing (TorchScript / ONNX export, where ONNX has no cummax)
    a masked (B, T, T) maximum, which is the same for non-negative values.
    """
    if not torch.jit.is_tracing():
        return values.cummax(1).values
    steps = torch.arange(values.shape[1], device=values.device)
    earlier = steps[None, :] <= steps[:, None]  # (T, T): key j is at or before query t
    return torch.where(earlier, values[:, None, :], 0).amax(-1)  # (B, T)


def token_positions(valid: Tensor, episode_start: Tensor, start: Tensor | None = None) -> Tensor:
    """(B, T) long: how many real tokens of the same episode precede each token.

    `start` (B,) is the count already in the incoming state (segment 0 continues from it). A
    padded token gets the position the next real token will have; nothing may attend to it.
    """
    counts = valid.long().cumsum(1)  # (B, T) inclusive count of real tokens
    before = counts - valid.long()  # (B, T) real tokens strictly before t
    # `before` never decreases, so the latest episode start's value is a running max.
    base = running_max_nonnegative(torch.where(episode_start, before, torch.zeros_like(before)))
    positions = before - base
    if start is not None:
        first_segment = segment_ids(episode_start) == 0
        positions = positions + torch.where(first_segment, start[:, None], 0)
    return positions  # (B, T)


def compact_last(values: Tensor, keep: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The last `size` kept entries of each row, right-aligned, zeros in front.

    values: (B, S, D); keep: (B, S) bool. Returns ((B, size, D), count (B,) capped at size).
    Used to update memories when a chunk had padding or an episode start inside it.
    """
    batch, _, width = values.shape
    after = keep.flip(1).long().cumsum(1).flip(1) - keep.long()  # (B, S) kept entries after
    target = size - 1 - after
    target = torch.where(keep & (target >= 0), target, size)  # slot `size` is discarded
    out = values.new_zeros(batch, size + 1, width)  # (B, size + 1, D)
    out.scatter_(1, target[..., None].expand(-1, -1, width), values)
    count = keep.long().sum(1).clamp(max=size)
    return out[:, :size], count
