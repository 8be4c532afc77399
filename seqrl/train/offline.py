"""The shared offline training loop: sample, `agent.update(batch)`, log, evaluate, checkpoint.

It serves every offline agent (Decision Transformer, and later Q-Transformer, diffusion and
recurrent behaviour cloning) and never branches on the algorithm: an agent is anything with
`update`, `policy`, `state_dict` and `load_state_dict` (`seqrl.core.Agent`), a sampler anything
with `sample`, `state_dict` and `load_state_dict`.

Resume: a checkpoint holds the agent (weights, optimizer, scheduler), the sampler's RNG and the
global RNGs, taken after the step's evaluation. Resuming from step N therefore replays steps
N+1.. exactly as the uninterrupted run would have (same batches, same dropout masks), which
`tests/train/test_offline.py` checks weight for weight.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from seqrl.checkpoint import (
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from seqrl.core import Agent
from seqrl.envs.evaluate import EvalResult, evaluate
from seqrl.envs.scores import ReferenceScores
from seqrl.train.logging import RunLogger


class Sampler(Protocol):
    def sample(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class OfflineConfig:
    """Settings of the offline loop (not of the algorithm)."""

    steps: int = 100_000
    """Gradient updates in total."""
    log_every: int = 100
    """Write training metrics every this many updates."""
    eval_every: int = 10_000
    """Evaluate every this many updates (0: only at the end)."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    eval_num_envs: int = 10
    """Parallel envs per evaluation."""
    eval_seed: int = 10_000
    """Seed of the first evaluation episode (kept apart from training seeds)."""
    checkpoint_every: int = 10_000
    """Write a checkpoint every this many updates (and always at the end)."""
    keep_checkpoints: int = 3
    """How many checkpoints to keep."""


@dataclass
class EvalTarget:
    """Where and how the loop evaluates: env, reference scores, policy options."""

    env_id: str
    reference: ReferenceScores | None = None
    policy_kwargs: dict[str, Any] = field(default_factory=dict)


def run_evaluation(
    agent: Agent,
    target: EvalTarget,
    episodes: int,
    num_envs: int,
    seed: int,
    progress: bool = False,
) -> EvalResult:
    """Evaluate `agent`'s current policy on `target` (used by the loop and by `seqrl eval`)."""
    num_envs = min(num_envs, episodes)
    policy = agent.policy(num_envs=num_envs, **target.policy_kwargs)
    return evaluate(
        policy,
        target.env_id,
        episodes,
        num_envs,
        seed,
        reference=target.reference,
        progress=progress,
    )


def train_offline(
    agent: Agent,
    sampler: Sampler,
    run_dir: str | Path,
    config: OfflineConfig,
    eval_target: EvalTarget | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """Train `agent` on batches from `sampler` for `config.steps` updates; return the last metrics.

    With `resume=True`, continue from the run's latest checkpoint (error if it has none).
    """
    run_dir = Path(run_dir)
    start = 0
    if resume:
        folder = latest_checkpoint(run_dir)
        if folder is None:
            raise FileNotFoundError(
                f"{run_dir} has no complete checkpoint to resume from; start a new run instead"
            )
        agent_state, loop_state = load_checkpoint(folder)
        agent.load_state_dict(agent_state)
        sampler.load_state_dict(loop_state["sampler"])
        set_rng_state(loop_state["rng"])
        start = checkpoint_step(folder)
    logger = RunLogger(run_dir, config.steps, start, unit="update", progress=progress)
    if start >= config.steps:
        logger.write(f"{run_dir}: already trained for {start} updates (steps={config.steps})")

    def checkpoint(step: int) -> None:
        loop_state = {"step": step, "sampler": sampler.state_dict(), "rng": rng_state()}
        save_checkpoint(run_dir, step, agent.state_dict(), loop_state, keep=config.keep_checkpoints)

    last: dict[str, float] = {}
    step = start
    try:
        with graceful_interrupt() as stop_requested:
            while step < config.steps:
                if stop_requested():
                    raise KeyboardInterrupt
                step += 1
                last.update(_one_step(agent, sampler, step, config, eval_target, logger))
                if step % config.checkpoint_every == 0 or step == config.steps:
                    checkpoint(step)
    except KeyboardInterrupt:
        # Ctrl-C is deferred to the end of the running step (graceful_interrupt), so every update
        # counted in `step` is complete: keep the work as a checkpoint to resume from.
        if step > start and latest_step(run_dir) != step:
            checkpoint(step)
        logger.write(f"interrupted at step {step}; continue with --resume {run_dir}")
        raise
    finally:
        logger.close()
    return last


def _one_step(
    agent: Agent,
    sampler: Sampler,
    step: int,
    config: OfflineConfig,
    eval_target: EvalTarget | None,
    logger: RunLogger,
) -> dict[str, float]:
    """Update once; log and evaluate when due. Returns the metrics recorded at this step."""
    metrics = agent.update(sampler.sample())
    recorded: dict[str, float] = {}
    if step % config.log_every == 0 or step == config.steps:
        logger.log(step, metrics, rate=True)
        recorded.update(metrics)
    elif step % 10 == 0:
        logger.advance(step)
    eval_due = config.eval_every > 0 and step % config.eval_every == 0
    if eval_target is not None and (eval_due or step == config.steps):
        result = run_evaluation(
            agent, eval_target, config.eval_episodes, config.eval_num_envs, config.eval_seed
        )
        logger.log(step, result.metrics())
        recorded.update(result.metrics())
        logger.write(f"step {step}: {_eval_line(result)}")
    return recorded


@contextlib.contextmanager
def graceful_interrupt() -> Iterator[Callable[[], bool]]:
    """Defer Ctrl-C (SIGINT) to the next step boundary; a second Ctrl-C stops at once.

    Yields a function that says whether a stop was requested. Outside the main thread (where
    signal handlers cannot be installed) it never defers.
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


def latest_step(run_dir: Path) -> int | None:
    folder = latest_checkpoint(run_dir)
    return None if folder is None else checkpoint_step(folder)


def _eval_line(result: EvalResult) -> str:
    line = f"return {result.mean:.1f} ± {result.std:.1f} over {len(result.returns)} episodes"
    if result.normalized_mean is not None:
        line += f", normalized score {result.normalized_mean:.1f} ± {result.normalized_std:.1f}"
    return line
