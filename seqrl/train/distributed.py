"""Data-parallel offline training under `torchrun`: the process group, per-rank seeds, gradient
all-reduce and the run state every rank keeps.

```
torchrun --nproc_per_node 2 -m seqrl train dt --dataset D --run-dir R

  rank 0                                   rank 1
  sampler seed = seed                      sampler seed = seed + 1000       (own batches)
  torch/NumPy RNG = seed                   torch/NumPy RNG = seed + 1000    (own dropout)
  agent built from seed (same weights) ---- checked equal (fingerprint) ----
  loss.backward()                          loss.backward()
        `--- optimizer_step: all-reduce mean of the gradients ---'          (one flat buffer
  optimizer.step() (same grads -> same weights, EMA, targets)               per device/dtype)
  log (metrics averaged over ranks), checkpoint (every rank's sampler and RNG), evaluate
```

Semantics: every rank draws `batch_size` windows from its own seed stream (rank r: `seed +
1000 * r`, `SEED_STRIDE`), so the global batch is `world_size * batch_size`. Gradients are the
mean over ranks of each rank's mean loss, which is the single-process gradient on the
concatenated batch whenever each rank's loss is a mean over equally many terms
(`tests/train/test_distributed.py` checks the weights to 1e-6). The average happens inside
`seqrl.nn.optim.optimizer_step`, the one optimizer step every agent uses, so no agent changes and
`agent.model` keeps its attributes (DDP would wrap it). The cost is that the all-reduce runs after
`backward` instead of overlapping with it as DDP's bucketed reducer does.

Because all ranks start from the same weights and apply the same averaged gradients, every piece
of agent state that is a function of weights and gradients (Adam moments, schedulers, EMA copies,
target networks) stays identical across ranks; `DataParallel` checks this at every checkpoint and
refuses to go on if the ranks differ (e.g. an agent that stepped an optimizer itself).

Rank 0 alone writes the run directory (config, lock, metrics, TensorBoard, checkpoints) and
evaluates. A checkpoint holds every rank's sampler and RNG state, so a distributed run resumes
exactly, with the same number of processes.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from seqrl.checkpoint import rng_state, set_rng_state
from seqrl.nn.optim import synchronized_gradients

SEED_STRIDE = 1000
"""Rank r samples (and draws dropout masks) from seed `seed + SEED_STRIDE * r`."""
TIMEOUT_MINUTES = int(os.environ.get("SEQRL_DIST_TIMEOUT_MIN", "120"))
"""How long a collective waits for the other ranks; rank 0 evaluates while the others wait at
the next gradient all-reduce, so this bounds an evaluation's length (env SEQRL_DIST_TIMEOUT_MIN)."""


@dataclass(frozen=True)
class World:
    """This process's place in the process group; `World()` is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = "none"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, checkpoints and evaluates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def rank_seed(self, seed: int) -> int:
        """This rank's sampler and dropout seed."""
        return seed + SEED_STRIDE * self.rank

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (e.g. a Ctrl-C that reached one)."""
        if not self.distributed:
            return flag
        value = torch.tensor([float(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def gather(self, obj: Any) -> list[Any]:
        """`obj` of every rank, in rank order (picklable objects)."""
        if not self.distributed:
            return [obj]
        # as torch.save bytes: all_gather_object's own pickling of tensors does not load back
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, buffer.getvalue())
        # weights_only: tensors and plain data only, never code, even from our own peers
        return [torch.load(io.BytesIO(data), weights_only=True) for data in out]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """Every metric averaged over ranks (same keys on every rank)."""
        if not self.distributed:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(values)
        return dict(zip(keys, (values / self.size).tolist()))


SINGLE = World()


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by `torchrun` (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_torchrun_env(rank: int, size: int, port: int) -> dict[str, str]:
    """The environment torchrun gives rank `rank` of `size` processes on this machine (for
    launching ranks without torchrun: tests, benchmarks)."""
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "WORLD_SIZE": str(size),
        "LOCAL_RANK": str(rank),
    }


def default_backend() -> str:
    """gloo for CPU tensors, NCCL for CUDA tensors when there is a GPU."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def distributed_world(backend: str | None = None) -> Iterator[World]:
    """The process group for this run: `SINGLE` unless launched by `torchrun`, else initialized
    from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and torn down
    on exit. A group the caller initialized already is used as is and left open.

    On a GPU machine each rank's default CUDA device becomes `cuda:LOCAL_RANK`, so a run
    configured with `agent.device=cuda` puts rank r on GPU r without naming it.
    """
    if dist.is_available() and dist.is_initialized():
        yield _current_world()
        return
    if not launched_by_torchrun():
        yield SINGLE
        return
    _bind_functional_collectives_before_init()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(
        backend or default_backend(), timeout=datetime.timedelta(minutes=TIMEOUT_MINUTES)
    )
    try:
        yield _current_world()
    finally:
        dist.destroy_process_group()


def _bind_functional_collectives_before_init() -> None:
    """Import `torch.distributed.nn` while no process group exists.

    Its functions take `group=group.WORLD` as default arguments, bound once at import. Building
    a torch optimizer imports it (through torch._dynamo and torch._inductor.config), so an agent
    built inside the world binds the live group there for good. That group then
    outlives `destroy_process_group`, and so do its gloo worker threads: at interpreter exit,
    one of them can still be releasing the tensors of the last collective, and its call into a
    finalizing interpreter aborts the process (SIGABRT, "terminate called without an active
    exception"). Imported first, the defaults bind None and the group dies on destroy.
    """
    import torch.distributed.nn  # noqa: F401


def _current_world() -> World:
    return World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
    )


class GradientAllReduce:
    """Replaces every rank's gradients by their mean over ranks; installed into
    `seqrl.nn.optim.optimizer_step` by `DataParallel`.

    A parameter without a gradient on some rank (unused by that rank's batch) gets zeros there
    when any rank has one, so all ranks reduce the same tensors and step the same parameters, as
    one process on the concatenated batch would. Gradients are reduced as one flat buffer per
    (device, dtype).
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.calls = 0

    def __call__(self, params: list[torch.nn.Parameter]) -> None:
        self.calls += 1
        has_grad = torch.tensor([float(p.grad is not None) for p in params])  # (P,)
        dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
        groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for param, flag in zip(params, has_grad.tolist()):
            if flag == 0:
                continue
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            groups.setdefault((param.grad.device, param.grad.dtype), []).append(param.grad)
        for grads in groups.values():
            flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of sizes,)
            dist.all_reduce(flat)
            flat /= self.world.size
            offset = 0
            for grad in grads:
                grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                offset += grad.numel()


def fingerprint(state: Any) -> str:
    """A hash of every tensor and number in a (nested) state dict: equal across ranks exactly
    when their agents hold the same weights, optimizer, EMA and target-network state."""
    digest = hashlib.sha256()

    def visit(value: Any, key: str) -> None:
        if isinstance(value, Tensor):
            digest.update(key.encode())
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for name in sorted(value, key=str):
                visit(value[name], f"{key}.{name}")
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                visit(item, f"{key}.{index}")
        elif isinstance(value, (int, float, str, bool)) or value is None:
            digest.update(f"{key}={value!r}".encode())

    visit(state, "")
    return digest.hexdigest()


def batch_rows(batch: Any) -> int | None:
    """Rows of a sampled batch (`WindowBatch.batch_size`, or a tuple's first tensor)."""
    rows = getattr(batch, "batch_size", None)
    if isinstance(rows, int):
        return rows
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return int(batch[0].shape[0])
    return None


class DataParallel:
    """What the offline loop does differently on several ranks; a pass-through on `SINGLE`.

    ```python
    parallel = DataParallel(world, agent)
    RunSession(..., loop_state=lambda: parallel.loop_state({"sampler": ...}), world=world)
    with session as run, parallel.training(run.logger.write):
        sampler.load_state_dict(parallel.restore(run.restored)["sampler"])
        metrics = parallel.after_update(run.update(batch), batch)
        run.advance(1, parallel.metrics(metrics))       # at log steps: averaged over ranks
    ```
    """

    def __init__(self, world: World, agent: Any) -> None:
        self.world, self.agent = world, agent
        self.reduce = GradientAllReduce(world)
        self.batch_per_rank: int | None = None
        self._write: Callable[[str], None] = print

    @contextlib.contextmanager
    def training(self, write: Callable[[str], None] = print) -> Iterator[DataParallel]:
        """Check the ranks start equal and average gradients in `optimizer_step` meanwhile.

        At the end (budget reached or a stop every rank agreed on) the ranks wait for each
        other, so none leaves before rank 0 has written its last checkpoint and evaluated."""
        self._write = write
        if not self.world.distributed:
            yield self
            return
        self.check_in_sync("at the start (build the agent from the same seed on every rank)")
        with synchronized_gradients(self.reduce):
            try:
                yield self
            except KeyboardInterrupt:
                dist.barrier()
                raise
            dist.barrier()

    def after_update(self, metrics: dict[str, float], batch: Any) -> dict[str, float]:
        """After each update: check the gradients were averaged; describe the batch once."""
        if not self.world.distributed:
            return metrics
        if self.reduce.calls == 0:
            raise RuntimeError(
                f"{type(self.agent).__name__}.update did not call seqrl.nn.optim.optimizer_step, "
                "so its gradients were not averaged across ranks. Fix: step every optimizer "
                "through optimizer_step (or WarmupAdamW.step), or train it in one process"
            )
        if self.batch_per_rank is None:
            self.batch_per_rank = batch_rows(batch)
            self._write(self.describe())
        return metrics

    def describe(self) -> str:
        rows = self.batch_per_rank
        batch = "?" if rows is None else f"{rows}, global batch {rows * self.world.size}"
        return (
            f"data-parallel: {self.world.size} ranks ({self.world.backend}), per-rank batch "
            f"{batch}; rank r samples from seed + {SEED_STRIDE}*r"
        )

    def metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Metrics averaged over ranks (the loss of the global batch), with the batch sizes."""
        if not self.world.distributed:
            return metrics
        averaged = self.world.mean(metrics)
        averaged["perf/world_size"] = float(self.world.size)
        if self.batch_per_rank is not None:
            averaged["perf/batch_per_rank"] = float(self.batch_per_rank)
            averaged["perf/global_batch"] = float(self.batch_per_rank * self.world.size)
        return averaged

    def loop_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The loop state to checkpoint: `state` plus, on several ranks, every rank's own state
        and RNG (`ranks`), after checking that all agents are still identical."""
        if not self.world.distributed:
            return state
        self.check_in_sync("at a checkpoint")
        return {**state, "ranks": self.world.gather({**state, "rng": rng_state()})}

    def restore(self, restored: dict[str, Any]) -> dict[str, Any]:
        """This rank's part of a restored loop state (its RNG set again)."""
        ranks = restored.get("ranks")
        saved_size = 1 if ranks is None else len(ranks)
        if saved_size != self.world.size:
            raise ValueError(
                f"the checkpoint was written by a {saved_size}-process run and this one has "
                f"{self.world.size}: exact resume needs the same number. Fix: resume with "
                f"torchrun --nproc_per_node {saved_size} (or start a new run)"
            )
        if ranks is None:
            return restored
        own = ranks[self.world.rank]
        set_rng_state(own["rng"])
        return own

    def check_in_sync(self, when: str) -> None:
        prints = self.world.gather(fingerprint(self.agent.state_dict()))
        if len(set(prints)) > 1:
            differ = [r for r, p in enumerate(prints) if p != prints[0]]
            raise RuntimeError(
                f"data-parallel ranks hold different agent states {when}: ranks {differ} differ "
                "from rank 0. Every optimizer must step through seqrl.nn.optim.optimizer_step, "
                "and any other state must follow from the weights and gradients alone"
            )


class QuietLogger:
    """The logger of ranks other than 0: the run's metrics and messages are rank 0's."""

    def advance(self, step: int) -> None:
        pass

    def log(self, step: int, metrics: dict[str, Any], rate: bool = False) -> None:
        pass

    def write(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass
