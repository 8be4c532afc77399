"""The shared offline training loop: sample, `agent.update(batch)`, log, checkpoint, evaluate.

It serves every offline agent and never branches on the algorithm: an agent is anything with
`update`, `policy`, `state_dict` and `load_state_dict` (`seqrl.core.Agent`), a sampler anything
with `sample`, `state_dict` and `load_state_dict` (built by the agent's registry entry). Resume,
checkpoints, deferred Ctrl-C and the evaluation schedule are `seqrl.train.session.RunSession`'s,
shared with the online loop.

Resume: a checkpoint holds the agent (weights, optimizer, scheduler), the sampler's RNG and the
global RNGs, taken right after the step. Resuming from step N therefore replays steps N+1..
exactly as the uninterrupted run would have (same batches, same dropout masks), which
`tests/train/test_offline.py` checks weight for weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from seqrl.core import Agent
from seqrl.envs.evaluate import EvalResult, evaluate
from seqrl.envs.scores import ReferenceScores
from seqrl.train.distributed import SINGLE, DataParallel, World
from seqrl.train.session import RunSession, ScheduleConfig, describe_run


class Sampler(Protocol):
    def sample(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class OfflineConfig(ScheduleConfig):
    """Settings of the offline loop (not of the algorithm); steps are gradient updates."""

    steps: int = 100_000
    """Gradient updates in total."""
    log_every: int = 100
    """Write training metrics every this many updates."""


@dataclass
class EvalTarget:
    """Where and how a loop evaluates: env, reference scores, policy options."""

    env_id: str
    reference: ReferenceScores | None = None
    policy_options: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)


def run_evaluation(
    agent: Agent,
    target: EvalTarget,
    episodes: int,
    num_envs: int,
    seed: int,
    progress: bool = False,
    asynchronous: bool = False,
) -> EvalResult:
    """Evaluate `agent`'s current (non-exploring) policy on `target` (both loops).

    `asynchronous`: step the evaluation envs in subprocesses (`train.asynchronous`)."""
    num_envs = min(num_envs, episodes)
    policy = agent.policy(num_envs, **target.policy_options)
    return evaluate(
        policy,
        target.env_id,
        episodes,
        num_envs,
        seed,
        reference=target.reference,
        progress=progress,
        env_kwargs=target.env_kwargs,
        asynchronous=asynchronous,
    )


def train_offline(
    agent: Agent,
    sampler: Sampler,
    run_dir: str | Path,
    config: OfflineConfig,
    eval_target: EvalTarget | None = None,
    resume: bool = False,
    progress: bool = True,
    world: World = SINGLE,
) -> dict[str, float]:
    """Train `agent` on batches from `sampler` for `config.steps` updates; return the last metrics.

    With `resume=True`, continue from the run's latest checkpoint (error if it has none).
    `world`: the data-parallel ranks when launched by torchrun (`seqrl.train.distributed`).
    """

    def evaluate_now() -> EvalResult:
        assert eval_target is not None
        return run_evaluation(
            agent,
            eval_target,
            config.eval_episodes,
            config.eval_num_envs,
            config.eval_seed,
            asynchronous=config.asynchronous,
        )

    parallel = DataParallel(world, agent)  # a pass-through in one process
    session = RunSession(
        run_dir,
        agent,
        config,
        config.steps,
        unit="update",
        evaluate=None if eval_target is None or not world.is_main else evaluate_now,
        loop_state=lambda: parallel.loop_state({"sampler": sampler.state_dict()}),
        resume=resume,
        progress=progress,
        world=world,
        describe=lambda: describe_run(
            agent,
            config,
            None if eval_target is None else eval_target.env_id,
            None if eval_target is None else eval_target.env_kwargs,
            None if eval_target is None else eval_target.policy_options,
            None if eval_target is None else eval_target.reference,
        ),
    )
    with session as run, parallel.training(run.logger.write):
        if "sampler" in run.restored:
            sampler.load_state_dict(parallel.restore(run.restored)["sampler"])
        while run.active():
            batch = sampler.sample()
            metrics = parallel.after_update(run.update(batch), batch)
            step = run.step + 1
            log = step % max(config.log_every, 1) == 0 or step >= config.steps
            run.advance(1, parallel.metrics(metrics) if log else None)
    return run.last
