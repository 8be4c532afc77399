"""The one optimizer step every agent uses: zero_grad, backward, clip, step, scheduler step.

Keeping this in one place means every agent logs the same `train/grad_norm` (the total norm
*before* clipping) and clips the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    loss: Tensor,
    parameters: Iterable[torch.nn.Parameter],
    max_grad_norm: float | None = None,
    scheduler: Any | None = None,
) -> float:
    """Backpropagate `loss` and update; returns the gradient norm before clipping.

    parameters: the parameters to clip and measure (usually all the optimizer updates).
    max_grad_norm: clip the total L2 norm to this value; None = no clipping.
    scheduler: a learning-rate scheduler stepped once after the optimizer (or None).
    A non-finite norm is returned as is (nan/inf) so the caller can log and react to it.
    """
    params = [p for p in parameters]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in params if p.grad is not None]
    if max_grad_norm is not None:
        if max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive or None; got {max_grad_norm}.")
        norm = torch.nn.utils.clip_grad_norm_(
            [p for p in params if p.grad is not None], max_grad_norm
        )
    elif grads:
        norm = torch.nn.utils.get_total_norm(grads)
    else:
        norm = torch.zeros(())
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return float(norm)
