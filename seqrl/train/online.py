"""The shared online loop: collect with `policy.act` over vector envs, `agent.update(rollout)`,
log, checkpoint, evaluate.

The loop serves every on-policy agent and never branches on the algorithm. It touches the agent
through `agent.policy(num_envs, explore=True)` (once, for collection) and `agent.policy(n)` (for
evaluation), the policy through `reset(done)` and `act(obs, reward)`, and the agent through
`update(rollout)` and, for checkpoints, `state_dict` / `load_state_dict`. Whatever the policy
returns in `PolicyStep.info` (log-prob, value, memory) goes into the `RolloutBuffer`
(`seqrl.buffers.rollout`), which cuts the rollout into chunks as the agent's
`RolloutSettings` ask. Resume, checkpoints, deferred Ctrl-C and the evaluation schedule are
`seqrl.train.session.RunSession`'s, shared with the offline loop: a Ctrl-C during `update`
lets the update finish and checkpoints it under its own step count.

Episode ends: envs run in Gymnasium's same-step autoreset mode (`seqrl.envs.make_vector_env`).
For a *truncated* episode the true last observation (`seqrl.envs.final_observations`) is stored
as the chunk's bootstrap observation, and the agent bootstraps from its value; a *terminated*
episode does not bootstrap. The policy's memory is reset for the envs that finished.

Resume: a checkpoint holds the agent (weights, optimizer), the env-step count and the global
RNGs. Env states cannot be saved in general, so a resumed run starts fresh episodes (seeded from
the run seed and the step) with an empty policy memory: it continues the training, but is not a
bit-exact replay of the uninterrupted run (the offline loop's is).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqrl.buffers.rollout import RolloutBuffer
from seqrl.core import Agent, RolloutSettings
from seqrl.envs import final_observations, make_vector_env
from seqrl.train.offline import EvalTarget, run_evaluation
from seqrl.train.session import RunSession, ScheduleConfig, describe_run


@dataclass
class OnlineConfig(ScheduleConfig):
    """Settings of the online loop (not of the algorithm); steps are env steps over all envs."""

    steps: int = 1_000_000
    """Environment steps in total (over all envs); training stops at the first update that
    reaches it."""
    num_envs: int = 16
    """N: parallel training envs."""
    rollout_steps: int = 128
    """R: steps per env between updates (a rollout is N x R steps)."""
    eval_every: int = 100_000
    """Evaluate every this many env steps (0: only at the end)."""
    eval_episodes: int = 100
    """Episodes per evaluation (non-exploring policy)."""
    eval_num_envs: int = 20
    """Parallel envs per evaluation."""
    checkpoint_every: int = 100_000
    """Write a checkpoint every this many env steps (and always at the end)."""


@dataclass
class EpisodeStats:
    """Running returns and lengths of the training envs; finished episodes since the last log."""

    returns: np.ndarray
    lengths: np.ndarray
    finished_returns: list[float]
    finished_lengths: list[int]

    @classmethod
    def empty(cls, num_envs: int) -> EpisodeStats:
        return cls(np.zeros(num_envs), np.zeros(num_envs, dtype=np.int64), [], [])

    def add(self, reward: np.ndarray, done: np.ndarray) -> None:
        self.returns += reward
        self.lengths += 1
        for env in np.flatnonzero(done):
            self.finished_returns.append(float(self.returns[env]))
            self.finished_lengths.append(int(self.lengths[env]))
        self.returns[done] = 0.0
        self.lengths[done] = 0

    def pop_metrics(self) -> dict[str, float]:
        if not self.finished_returns:
            return {}
        out = {
            "rollout/return_mean": float(np.mean(self.finished_returns)),
            "rollout/length_mean": float(np.mean(self.finished_lengths)),
            "rollout/episodes": float(len(self.finished_returns)),
        }
        self.finished_returns, self.finished_lengths = [], []
        return out


def exact_budget(config: OnlineConfig) -> int:
    """The env steps a run really trains: whole rollouts of num_envs x rollout_steps, the
    first multiple of it at or above `steps`."""
    per_update = config.num_envs * config.rollout_steps
    return -(-config.steps // per_update) * per_update


def budget_line(config: OnlineConfig) -> str:
    """What a budget that is not a whole number of rollouts becomes, said up front."""
    per_update = config.num_envs * config.rollout_steps
    total = exact_budget(config)
    return (
        f"train.steps={config.steps} is not a multiple of num_envs x rollout_steps = "
        f"{per_update}: the run trains {total} env steps ({total // per_update} updates)"
    )


def train_online(
    agent: Agent,
    env_id: str,
    run_dir: str | Path,
    config: OnlineConfig,
    rollout: RolloutSettings | None = None,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    eval_target: EvalTarget | None = None,
) -> dict[str, float]:
    """Train `agent` on `env_id` for `config.steps` env steps; return the last metrics.

    Args:
        rollout: what the agent asks of the rollout buffer (`AgentEntry.rollout_settings`).
        seed: env i of the training vector env starts from seed `seed + i`.
        env_kwargs: passed to `gymnasium.make` (training and evaluation envs).
        resume: continue from the run's latest checkpoint (error if it has none).
        eval_target: where to evaluate (default: `env_id`, no reference scores, default
            policy options).
    """
    env_kwargs = dict(env_kwargs or {})
    rollout = rollout or RolloutSettings()
    target = eval_target or EvalTarget(env_id, env_kwargs=env_kwargs)
    num_envs, steps = config.num_envs, config.rollout_steps

    def evaluate_now() -> Any:
        return run_evaluation(
            agent,
            target,
            config.eval_episodes,
            config.eval_num_envs,
            config.eval_seed,
            asynchronous=config.asynchronous,
        )

    total = exact_budget(config)
    session = RunSession(
        run_dir,
        agent,
        config,
        total,
        unit="env-step",
        evaluate=evaluate_now,
        resume=resume,
        progress=progress,
        describe=lambda: describe_run(
            agent, config, env_id, env_kwargs, target.policy_options, None, seed
        ),
    )
    envs = None
    with session as run:
        if total != config.steps:
            run.logger.write(budget_line(config))
        try:
            envs = make_vector_env(env_id, num_envs, seed, config.asynchronous, **env_kwargs)
            buffer = RolloutBuffer(num_envs, steps, rollout.chunk_len or steps)
            policy = agent.policy(num_envs, explore=True)
            episodes = EpisodeStats.empty(num_envs)
            obs, _ = envs.reset(seed=seed + run.start)
            policy.reset(None)
            buffer.new_episodes()
            reward: np.ndarray | None = None
            while run.active():
                began = time.perf_counter()
                for _ in range(steps):
                    chosen = policy.act(obs, reward)
                    next_obs, reward, terminated, truncated, infos = envs.step(
                        chosen.action.cpu().numpy()
                    )
                    done = np.logical_or(terminated, truncated)
                    final = (
                        final_observations(next_obs, infos, truncated) if truncated.any() else None
                    )
                    buffer.add(obs, chosen, reward, terminated, truncated, final)
                    episodes.add(reward, done)
                    if done.any():
                        policy.reset(done)
                        reward = np.where(done, 0.0, reward)
                    obs = next_obs
                collected = time.perf_counter()
                metrics = run.update(buffer.finish(obs))
                updated = time.perf_counter()
                metrics.update(episodes.pop_metrics())
                metrics["perf/collect_steps_per_s"] = num_envs * steps / (collected - began)
                metrics["perf/update_s"] = updated - collected
                run.advance(num_envs * steps, metrics)
        finally:
            if envs is not None:
                envs.close()
    return run.last
