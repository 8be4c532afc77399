"""The run state both loops share: resume, checkpoint schedule and retention, deferred Ctrl-C,
the evaluation schedule and its log line.

```python
with RunSession(run_dir, agent, config, total, unit, evaluate=..., resume=...) as run:
    sampler.load_state_dict(run.restored["sampler"])      # loop state saved with a checkpoint
    while run.active():                                    # Ctrl-C stops here, never mid-update
        metrics = agent.update(...)
        run.advance(steps_done, metrics)                   # log, checkpoint, evaluate when due
```

Order at a step boundary: log, checkpoint (when `checkpoint_every` is crossed or the budget is
reached), then evaluate (when `eval_every` is crossed or at the end). The checkpoint comes first so
that a failing evaluation never loses training work.

Ctrl-C (SIGINT) during a step is deferred to the step's end: the step completes, a checkpoint of
it is written (unless one was just written) and `KeyboardInterrupt` is raised from `active()`, so
a checkpoint always holds weights and optimizer state of whole steps under the right step number.
A second Ctrl-C stops at once without a checkpoint (the agent may be mid-update); the last
checkpoint stays valid.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqrl.checkpoint import (
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from seqrl.core import Agent
from seqrl.envs.evaluate import EvalResult
from seqrl.train.logging import RunLogger


@dataclass
class ScheduleConfig:
    """When a loop evaluates and checkpoints; both loop configs extend it."""

    eval_every: int = 10_000
    """Evaluate every this many steps (0: only at the end)."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    eval_num_envs: int = 10
    """Parallel envs per evaluation."""
    eval_seed: int = 10_000
    """Seed of the first evaluation episode (kept apart from training seeds)."""
    checkpoint_every: int = 10_000
    """Write a checkpoint every this many steps (and always at the end)."""
    keep_checkpoints: int = 3
    """How many checkpoints to keep."""


def crossed(every: int, before: int, after: int) -> bool:
    """True when a multiple of `every` lies in (before, after]; never for `every` <= 0."""
    return every > 0 and after // every > before // every


class RunSession:
    """One training run's state across steps; a context manager around the loop.

    Args:
        run_dir: the run directory.
        agent: the agent (its `state_dict` is checkpointed; on resume it is loaded).
        schedule: evaluation and checkpoint settings.
        total: the step budget (updates offline, env steps online).
        unit: what a step is, for the progress bar.
        evaluate: `evaluate()` -> `EvalResult` of the agent's current policy, or None.
        loop_state: `loop_state()` -> extra state to checkpoint (sampler); restored as
            `self.restored` on resume.
        resume: continue from the run's latest checkpoint (error if it has none).
        progress: show the progress bar.
    """

    def __init__(
        self,
        run_dir: str | Path,
        agent: Agent,
        schedule: ScheduleConfig,
        total: int,
        unit: str,
        evaluate: Callable[[], EvalResult] | None = None,
        loop_state: Callable[[], dict[str, Any]] = dict,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        self.run_dir, self.agent, self.schedule = Path(run_dir), agent, schedule
        self.total, self.evaluate, self.loop_state = total, evaluate, loop_state
        self.step = self.start = 0
        self.restored: dict[str, Any] = {}
        if resume:
            folder = latest_checkpoint(self.run_dir)
            if folder is None:
                raise FileNotFoundError(
                    f"{self.run_dir} has no complete checkpoint to resume from; start a new run "
                    "instead"
                )
            agent_state, saved = load_checkpoint(folder)
            agent.load_state_dict(agent_state)
            set_rng_state(saved["rng"])
            self.restored = saved
            self.step = self.start = checkpoint_step(folder)
        self.saved_step = self.start if resume else None
        self.last: dict[str, float] = {}
        self.logger = RunLogger(self.run_dir, total, self.start, unit=unit, progress=progress)
        if self.start >= total:
            self.logger.write(
                f"{self.run_dir}: already trained for {self.start} steps (of {total})"
            )
        self._stop_requested: Callable[[], bool] = lambda: False
        self._interrupt: contextlib.AbstractContextManager | None = None

    # ---- the context ------------------------------------------------------------------------
    def __enter__(self) -> RunSession:
        self._interrupt = deferred_interrupt()
        self._stop_requested = self._interrupt.__enter__()
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        try:
            if kind is KeyboardInterrupt:
                where = f"step {self.saved_step}" if self.saved_step else "none yet"
                self.logger.write(
                    f"interrupted at step {self.step} (last checkpoint: {where}); continue with "
                    f"--resume {self.run_dir}"
                )
        finally:
            if self._interrupt is not None:
                self._interrupt.__exit__(None, None, None)
            self.logger.close()

    # ---- the loop's calls ---------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.step >= self.total

    def active(self) -> bool:
        """Whether to run another step; at a requested stop, checkpoint and raise
        KeyboardInterrupt."""
        if self._stop_requested():
            if self.step > self.start and self.saved_step != self.step:
                self.checkpoint()
            raise KeyboardInterrupt
        return not self.finished

    def advance(self, steps: int, metrics: dict[str, float] | None) -> None:
        """Count `steps` more steps done; log `metrics` (None: only move the progress bar),
        then checkpoint and evaluate when due."""
        before, self.step = self.step, self.step + steps
        if metrics is not None:
            self.logger.log(self.step, metrics, rate=True)
            self.last.update(metrics)
        else:
            self.logger.advance(self.step)
        schedule = self.schedule
        if crossed(schedule.checkpoint_every, before, self.step) or self.finished:
            self.checkpoint()
        if self.evaluate is not None and (
            crossed(schedule.eval_every, before, self.step) or self.finished
        ):
            result = self.evaluate()
            self.logger.log(self.step, result.metrics())
            self.last.update(result.metrics())
            self.logger.write(f"step {self.step}: {eval_line(result)}")

    def checkpoint(self) -> None:
        loop_state = {**self.loop_state(), "step": self.step, "rng": rng_state()}
        save_checkpoint(
            self.run_dir,
            self.step,
            self.agent.state_dict(),
            loop_state,
            keep=self.schedule.keep_checkpoints,
        )
        self.saved_step = self.step


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Defer Ctrl-C (SIGINT) to the next step boundary; a second Ctrl-C stops at once.

    Yields a function that says whether a stop was requested. Outside the main thread (where
    signal handlers cannot be installed, and where SIGINT is never delivered) it never defers.
    """
    requested = False
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum: int, frame: Any) -> None:
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)


def eval_line(result: EvalResult) -> str:
    """The one-line summary of an evaluation both loops print."""
    line = (
        f"eval return {result.mean:.3f} ± {result.std:.3f} over {len(result.returns)} episodes "
        f"(length {np.mean(result.lengths):.1f})"
    )
    if result.normalized_mean is not None:
        line += f", normalized score {result.normalized_mean:.1f} ± {result.normalized_std:.1f}"
    return line
