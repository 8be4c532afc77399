"""The one optimizer step every agent uses: zero_grad, backward, clip, step, scheduler step.

Keeping this in one place means every agent logs the same `train/grad_norm` (the total norm
*before* clipping) and clips the same way.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

GradientSync = Callable[[list[torch.nn.Parameter]], None]
_GRADIENT_SYNC: list[GradientSync] = []


@contextlib.contextmanager
def synchronized_gradients(sync: GradientSync) -> Iterator[None]:
    """Within the block, `optimizer_step` calls `sync(params)` right after `backward` with the
    optimizer's parameters (data-parallel training averages gradients across ranks there:
    `seqrl.train.distributed`)."""
    _GRADIENT_SYNC.append(sync)
    try:
        yield
    finally:
        _GRADIENT_SYNC.remove(sync)


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
    if _GRADIENT_SYNC:  # data-parallel: every rank's gradients -> their mean
        _GRADIENT_SYNC[-1]([p for group in optimizer.param_groups for p in group["params"]])
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


class WarmupAdamW:
    """AdamW with a linear learning-rate warm-up and global gradient clipping, and an update
    counter: the optimizer of the sequence-imitation agents (DT, BC), as the reference DT.

    `step(loss)` runs `optimizer_step` and returns (grad norm before clipping, learning rate);
    `state_dict()` holds `optimizer`, `scheduler` and `updates` for a checkpoint.
    """

    def __init__(
        self,
        parameters: Iterable[torch.nn.Parameter],
        lr: float,
        weight_decay: float,
        warmup_steps: int,
        max_grad_norm: float | None,
    ) -> None:
        self.parameters = list(parameters)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=lr, weight_decay=weight_decay)
        warmup = max(warmup_steps, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min((step + 1) / warmup, 1.0)
        )
        self.max_grad_norm = max_grad_norm
        self.updates = 0

    @classmethod
    def from_config(cls, parameters: Iterable[torch.nn.Parameter], config: Any) -> WarmupAdamW:
        """From an agent config's `lr`, `weight_decay`, `warmup_steps` and `grad_clip`."""
        return cls(
            parameters, config.lr, config.weight_decay, config.warmup_steps, config.grad_clip
        )

    def step(self, loss: Tensor) -> tuple[float, float]:
        """Backpropagate and update once; (grad norm before clipping, learning rate used next)."""
        norm = optimizer_step(
            self.optimizer, loss, self.parameters, self.max_grad_norm, self.scheduler
        )
        self.updates += 1
        return norm, float(self.scheduler.get_last_lr()[0])

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (a no-op without an `optimizer` entry, as for
        weights-only loading)."""
        if "optimizer" not in state:
            return
        # a deep copy: Optimizer.load_state_dict keeps the given tensors, which would share
        # Adam's moments with the agent the state came from
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        self.updates = int(state["updates"])
