"""The run state both loops share: resume, checkpoint schedule and retention, deferred Ctrl-C,
the evaluation schedule and its log line.

```python
with RunSession(run_dir, agent, config, total, unit, evaluate=..., resume=...) as run:
    sampler.load_state_dict(run.restored["sampler"])      # loop state saved with a checkpoint
    while run.active():                                    # Ctrl-C stops here, never mid-update
        metrics = run.update(batch)                        # agent.update, non-finite guarded
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

Reliability (docs/reliability.md): the session holds the run's lock (`checkpoint.run_lock`), so
a second process training into the same directory is refused; on resume it removes leftovers of
interrupted writes and takes the newest checkpoint that verifies (a run directory with a config
but no checkpoint yet starts from step 0). `run.update(batch)` is the guarded `agent.update`: a
non-finite `train/loss` or `train/grad_norm` stops training with `NonFiniteError` (no checkpoint
of the poisoned weights is written), or with `train.skip_nonfinite` the update is undone from a
copy of the state taken before it and counted as `train/nonfinite_skipped`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from seqrl.checkpoint import (
    clean_leftovers,
    find_checkpoint,
    has_config,
    load_checkpoint,
    rng_state,
    run_lock,
    save_checkpoint,
    save_config,
    set_rng_state,
)
from seqrl.core import Agent
from seqrl.envs.evaluate import EvalResult
from seqrl.train.distributed import SINGLE, QuietLogger, World
from seqrl.train.logging import RunLogger


@dataclass
class ScheduleConfig:
    """When a loop evaluates and checkpoints, and where it steps envs; both loop configs extend
    it."""

    eval_every: int = 10_000
    """Evaluate every this many steps (0: only at the end)."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    eval_num_envs: int = 10
    """Parallel envs per evaluation."""
    eval_seed: int = 10_000
    """Seed of the first evaluation episode (kept apart from training seeds)."""
    asynchronous: bool = False
    """Step envs in subprocesses, one per env (Gymnasium's AsyncVectorEnv): the evaluation envs
    of both loops and the online loop's training envs. Same episodes and returns as stepping
    them in this process; faster only where env.step costs more than the exchange between
    processes and cores are free (README: rollout tables)."""
    checkpoint_every: int = 10_000
    """Write a checkpoint every this many steps (and always at the end)."""
    keep_checkpoints: int = 3
    """How many checkpoints to keep."""
    skip_nonfinite: bool = False
    """Skip (undo) an update whose `train/loss` or `train/grad_norm` is NaN/inf and go on,
    counted as `train/nonfinite_skipped`, instead of stopping the run. Costs a copy of the agent's
    state before every update."""

    def __post_init__(self) -> None:
        # Every integer loop setting is a count (>= 1), an interval `*_every` (>= 0, 0 = only at
        # the end) or a seed (>= 0); subclasses get the same checks for their own fields.
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            minimum = 0 if item.name.endswith(("_every", "_seed")) else 1
            if value < minimum:
                meaning = " (0 = only at the end)" if item.name.endswith("_every") else ""
                raise ValueError(
                    f"train.{item.name} must be >= {minimum}{meaning}, got {value}. Fix: "
                    f"--set train.{item.name}=N with N >= {minimum}"
                )


GUARDED_METRICS = ("train/loss", "train/grad_norm")
"""The metrics whose non-finite value means the update poisoned the agent."""


class NonFiniteError(ArithmeticError):
    """Training stopped at a non-finite loss or gradient; the last checkpoint is kept."""


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
        resume: continue from the run's newest valid checkpoint (from step 0 when the run has a
            config but no checkpoint yet; an error when it has neither).
        progress: show the progress bar.
        world: the data-parallel ranks (`seqrl.train.distributed`): only rank 0 locks, logs
            and writes checkpoints; a stop requested on any rank stops all.
        describe: `describe()` -> the run config to write as `config.yaml` with the first
            checkpoint when the run directory has none (a run driven from Python rather than
            `seqrl train`), so `seqrl eval` and `load_policy` can read it.
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
        world: World = SINGLE,
        describe: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        self.world, self.describe = world, describe
        self.run_dir, self.agent, self.schedule = Path(run_dir), agent, schedule
        self.total, self.evaluate, self.loop_state = total, evaluate, loop_state
        self.step = self.start = 0
        self.restored: dict[str, Any] = {}
        self.nonfinite_skipped = 0
        self._lock = run_lock(self.run_dir) if world.is_main else contextlib.nullcontext()
        self._lock.__enter__()
        try:
            notes = self._resume() if resume else []
            self.saved_step = self.start if self.restored else None
            self.last: dict[str, float] = {}
            self.logger = (
                RunLogger(self.run_dir, total, self.start, unit=unit, progress=progress)
                if world.is_main
                else QuietLogger()
            )
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        for note in notes:
            self.logger.write(note)
        if self.start >= total:
            self.logger.write(
                f"{self.run_dir}: already trained for {self.start} steps (of {total}); extend "
                f"it with --resume {self.run_dir} --steps N"
            )
        self._stop_requested: Callable[[], bool] = lambda: False
        self._interrupt: contextlib.AbstractContextManager | None = None

    def _resume(self) -> list[str]:
        """Load the newest valid checkpoint; returns the lines to tell the user."""
        leftovers = clean_leftovers(self.run_dir) if self.world.is_main else []
        notes = [f"removed leftover {name}" for name in leftovers]
        choice = find_checkpoint(self.run_dir)
        notes += [f"skipped {line}" for line in choice.skipped]
        if choice.folder is None:
            if choice.skipped:  # checkpoints there, none valid: never silently start over
                raise ValueError(
                    f"{self.run_dir} has no valid checkpoint to resume from: {choice.skipped[0]}"
                )
            if not has_config(self.run_dir):
                raise FileNotFoundError(
                    f"{self.run_dir} has no complete checkpoint to resume from; start a new run "
                    "instead"
                )
            return [*notes, f"{self.run_dir} has no checkpoint yet: starting from step 0"]
        agent_state, saved = load_checkpoint(choice.folder)
        self.agent.load_state_dict(agent_state)
        set_rng_state(saved["rng"])
        self.restored = saved
        self.nonfinite_skipped = int(saved.get("nonfinite_skipped", 0))
        self.step = self.start = choice.step
        return notes

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
            self._lock.__exit__(None, None, None)

    # ---- the loop's calls ---------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.step >= self.total

    def active(self) -> bool:
        """Whether to run another step; at a requested stop, checkpoint and raise
        KeyboardInterrupt."""
        if self.world.any(self._stop_requested()):
            if self.step > self.start and self.saved_step != self.step:
                self.checkpoint()
            raise KeyboardInterrupt
        return not self.finished

    def update(self, batch: Any) -> dict[str, float]:
        """`agent.update(batch)`, guarded against non-finite losses and gradients (see the
        module docstring)."""
        skip = self.schedule.skip_nonfinite
        before = copy.deepcopy(self.agent.state_dict()) if skip else None
        metrics = self.agent.update(batch)
        bad = {k: metrics[k] for k in GUARDED_METRICS if not _finite(metrics.get(k, 0.0))}
        if bad and before is not None:
            self.agent.load_state_dict(before)
            self.nonfinite_skipped += 1
        elif bad:
            key, value = next(iter(bad.items()))
            where = f"step {self.saved_step}" if self.saved_step is not None else "none yet"
            raise NonFiniteError(
                f"{key} is {value} in the update after step {self.step}: training stopped, the "
                f"last good checkpoint ({where}) is kept. Fix: lower agent.lr or check the data, "
                f"then --resume {self.run_dir}; or --set train.skip_nonfinite=true to skip such "
                "batches"
            )
        if self.nonfinite_skipped:
            metrics = {**metrics, "train/nonfinite_skipped": float(self.nonfinite_skipped)}
        return metrics

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
        loop_state["nonfinite_skipped"] = self.nonfinite_skipped
        if self.world.is_main and self.describe is not None and not has_config(self.run_dir):
            described = self.describe()
            if described is not None:
                save_config(self.run_dir, described)
        if self.world.is_main:
            save_checkpoint(
                self.run_dir,
                self.step,
                self.agent.state_dict(),
                loop_state,
                keep=self.schedule.keep_checkpoints,
            )
        self.saved_step = self.step


def describe_run(
    agent: Any,
    train_config: Any,
    env_id: str | None,
    env_kwargs: dict[str, Any] | None = None,
    policy_options: dict[str, Any] | None = None,
    reference: Any = None,
    seed: int | None = None,
) -> dict[str, Any] | None:
    """The `config.yaml` of a run driven from Python: the agent's registry name (found by its
    class), its config and spec, the loop settings and the evaluation env; None for an agent
    that is not in the registry (its run directory gets no config)."""
    import dataclasses

    from seqrl.agents import REGISTRY

    names = [name for name, entry in REGISTRY.items() if type(agent) is entry.agent_cls]
    if not names:  # an agent outside the registry: nothing a later command could rebuild
        return None
    options = dataclasses.asdict(REGISTRY[names[0]].options_cls(**(policy_options or {})))
    return {
        "algo": names[0],
        "env_id": env_id,
        "env_kwargs": dict(env_kwargs or {}),
        "seed": seed,
        "reference": None if reference is None else reference.to_dict(),
        "spec": agent.spec.to_dict(),
        "agent": dataclasses.asdict(agent.config),
        "policy": options,
        "train": dataclasses.asdict(train_config),
    }


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


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
