"""The shared online loop: collect with `policy.act` over vector envs, `agent.update(rollout)`,
log, evaluate, checkpoint; and `run_train_online`, what `seqrl train ALGO --env ENV` calls.

The loop serves every on-policy agent and never branches on the algorithm. It touches the agent
through `agent.policy(num_envs=N, deterministic=False)` (once), the policy through `reset(done)`
and `act(obs, reward)`, and the agent through `update(rollout)` and, for checkpoints,
`state_dict` / `load_state_dict`. Whatever the policy returns in `PolicyStep.info` (log-prob,
value, memory) goes into the `RolloutBuffer` (`seqrl.buffers.rollout`), which cuts the rollout
into chunks of at most `chunk_len` steps.

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
from typing import Annotated, Any

import numpy as np
import tyro

from seqrl.buffers.rollout import RolloutBuffer
from seqrl.checkpoint import (
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    run_config,
    save_checkpoint,
    save_config,
    set_rng_state,
)
from seqrl.config import from_dict, resolve_run_config
from seqrl.core import Agent, EnvSpec
from seqrl.envs import (
    EvalResult,
    evaluate,
    final_observations,
    make_env,
    make_vector_env,
    seed_everything,
)
from seqrl.train.logging import RunLogger


@dataclass
class OnlineConfig:
    """Settings of the online loop (not of the algorithm)."""

    env_steps: int = 1_000_000
    """Environment steps in total (over all envs)."""
    num_envs: int = 16
    """N: parallel training envs."""
    rollout_steps: int = 128
    """R: steps per env between updates (a rollout is N x R steps)."""
    asynchronous: bool = False
    """Step the envs in subprocesses (worth it only for slow envs)."""
    eval_every: int = 100_000
    """Evaluate every this many env steps (0: only at the end)."""
    eval_episodes: int = 100
    """Episodes per evaluation (deterministic policy)."""
    eval_num_envs: int = 20
    """Parallel envs per evaluation."""
    eval_seed: int = 10_000
    """Seed of the first evaluation episode (kept apart from training seeds)."""
    checkpoint_every: int = 100_000
    """Write a checkpoint every this many env steps (and always at the end)."""
    keep_checkpoints: int = 3
    """How many checkpoints to keep."""


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


def train_online(
    agent: Agent,
    env_id: str,
    run_dir: str | Path,
    config: OnlineConfig,
    chunk_len: int | None = None,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """Train `agent` on `env_id` for `config.env_steps` env steps; return the last metrics.

    Args:
        chunk_len: the agent's truncated-backpropagation length (None: whole rollouts).
        seed: env i of the training vector env starts from seed `seed + i`.
        env_kwargs: passed to `gymnasium.make` (training and evaluation envs).
        resume: continue from the run's latest checkpoint (error if it has none).
    """
    run_dir, env_kwargs = Path(run_dir), dict(env_kwargs or {})
    start = 0
    if resume:
        folder = latest_checkpoint(run_dir)
        if folder is None:
            raise FileNotFoundError(
                f"{run_dir} has no complete checkpoint to resume from; start a new run instead"
            )
        agent_state, loop_state = load_checkpoint(folder)
        agent.load_state_dict(agent_state)
        set_rng_state(loop_state["rng"])
        start = checkpoint_step(folder)
    num_envs, steps = config.num_envs, config.rollout_steps
    envs = make_vector_env(env_id, num_envs, seed, config.asynchronous, **env_kwargs)
    buffer = RolloutBuffer(num_envs, steps, chunk_len or steps)
    policy = agent.policy(num_envs=num_envs, deterministic=False)
    logger = RunLogger(run_dir, config.env_steps, start, unit="env-step", progress=progress)

    def checkpoint(step: int) -> None:
        loop_state = {"step": step, "rng": rng_state()}
        save_checkpoint(run_dir, step, agent.state_dict(), loop_state, keep=config.keep_checkpoints)

    def crossed(every: int, before: int, after: int) -> bool:
        return every > 0 and after // every > before // every

    last: dict[str, float] = {}
    step = start
    episodes = EpisodeStats.empty(num_envs)
    try:
        obs, _ = envs.reset(seed=seed + start)
        policy.reset(None)
        buffer.new_episodes()
        reward: np.ndarray | None = None
        while step < config.env_steps:
            began = time.perf_counter()
            for _ in range(steps):
                decision = policy.act(obs, reward)
                next_obs, reward, terminated, truncated, infos = envs.step(
                    decision.action.cpu().numpy()
                )
                done = np.logical_or(terminated, truncated)
                final = final_observations(next_obs, infos, truncated) if truncated.any() else None
                buffer.add(obs, decision, reward, terminated, truncated, final)
                episodes.add(reward, done)
                if done.any():
                    policy.reset(done)
                    reward = np.where(done, 0.0, reward)
                obs = next_obs
            collected = time.perf_counter()
            metrics = agent.update(buffer.finish(obs))
            updated = time.perf_counter()
            before, step = step, step + num_envs * steps
            metrics.update(episodes.pop_metrics())
            metrics["perf/collect_steps_per_s"] = num_envs * steps / (collected - began)
            metrics["perf/update_s"] = updated - collected
            logger.log(step, metrics, rate=True)
            last.update(metrics)
            if crossed(config.eval_every, before, step) or step >= config.env_steps:
                result = evaluate(
                    agent.policy(num_envs=min(config.eval_num_envs, config.eval_episodes)),
                    env_id,
                    config.eval_episodes,
                    config.eval_num_envs,
                    config.eval_seed,
                    env_kwargs=env_kwargs,
                )
                logger.log(step, result.metrics())
                last.update(result.metrics())
                logger.write(f"step {step}: {_eval_line(result)}")
            if crossed(config.checkpoint_every, before, step) or step >= config.env_steps:
                checkpoint(step)
    except KeyboardInterrupt:
        # Keep the work done: the last completed update becomes a checkpoint to resume from.
        if step > start:
            checkpoint(step)
            logger.write(
                f"interrupted: checkpoint at step {step}; continue with --resume {run_dir}"
            )
        raise
    finally:
        logger.close()
        envs.close()
    return last


def _eval_line(result: EvalResult) -> str:
    return (
        f"eval return {result.mean:.3f} ± {result.std:.3f} over {len(result.returns)} episodes "
        f"(length {np.mean(result.lengths):.1f})"
    )


# ---- run assembly: what `seqrl train ALGO --env ENV` does ------------------------------------


@dataclass
class TrainOnlineArgs:
    """Train an online agent (e.g. recurrent PPO) on a Gymnasium environment."""

    env: str | None = None
    """Gymnasium env id, e.g. seqrl/TMaze-v0, seqrl/MaskedCartPole-v1 (default: the preset's)."""
    backbone: str | None = None
    """Memory backbone (shortcut for --set agent.backbone=NAME): gtrxl | lstm | gru | xlstm | mlp."""
    config: str | None = None
    """Preset YAML (e.g. experiments/recurrent_ppo/tmaze-gtrxl.yaml) with agent/train sections."""
    set: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """Override one setting, repeatable: --set agent.lr=1e-4 --set train.num_envs=8."""
    run_dir: str | None = None
    """Where the run is written (default runs/ALGO-ENV-BACKBONE-sSEED-TIME)."""
    resume: str | None = None
    """Continue the run in this directory from its latest checkpoint."""
    seed: int | None = None
    """Seed of the run (envs, initialization, sampling)."""
    steps: int | None = None
    """Environment steps in total (shortcut for --set train.env_steps=N)."""


def resolve_online_config(
    algo: str,
    env_id: str | None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Preset file + `--set` overrides -> a config dict with `agent` and `train` validated."""
    from seqrl.agents import get_agent_entry

    entry = get_agent_entry(algo)
    base = {"algo": algo, "env_id": None, "env_kwargs": {}, "seed": 0, "agent": {}, "train": {}}
    config = resolve_run_config(
        base, config_file, overrides, entry.config_cls, OnlineConfig, {"env_id": env_id}
    )
    if not config.get("env_id"):
        raise ValueError("no environment: pass --env ENV_ID (e.g. --env seqrl/TMaze-v0)")
    return config


def env_spec(env_id: str, env_kwargs: dict[str, Any] | None = None) -> EnvSpec:
    """The spaces a model is built for, with a clear error for observations it cannot take."""
    env = make_env(env_id, **(env_kwargs or {}))
    try:
        space = env.observation_space
        if getattr(space, "shape", None) is None:
            hint = ""
            if hasattr(space, "spaces") and "image" in space.spaces:
                hint = f" For MiniGrid use the image-only id seqrl/{env_id} (pip install minigrid)."
            raise ValueError(
                f"{env_id}: observation space {space} is not a Box; online agents take array "
                f"observations.{hint}"
            )
        return EnvSpec.from_spaces(space, env.action_space)
    finally:
        env.close()


def train_online_run(
    run_dir: str | Path,
    config: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """Train (or with `resume`, continue) the run in `run_dir`; returns the final metrics.

    `config` comes from `resolve_online_config`; on resume it is read from the run directory.
    """
    from seqrl.agents import get_agent_entry

    run_dir = Path(run_dir)
    config = run_config(run_dir, config, resume)
    entry = get_agent_entry(config["algo"])
    agent_config = from_dict(entry.config_cls, config["agent"], "agent")
    train_config = from_dict(OnlineConfig, config["train"], "train")
    env_kwargs = dict(config.get("env_kwargs") or {})
    spec = env_spec(config["env_id"], env_kwargs)
    if not resume:
        config = {**config, "spec": spec.to_dict(), "reference": None}
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(run_dir, config)
    seed = int(config["seed"])
    seed_everything(seed)
    agent = entry.agent_cls(agent_config, spec)
    return train_online(
        agent,
        config["env_id"],
        run_dir,
        train_config,
        chunk_len=getattr(agent_config, "chunk_len", None),
        seed=seed,
        env_kwargs=env_kwargs,
        resume=resume,
        progress=progress,
    )


def run_train_online(algo: str, args: TrainOnlineArgs, progress: bool = True) -> Path:
    """`seqrl train ALGO --env ENV ...` for online algorithms; returns the run directory."""
    if args.resume is not None:
        train_online_run(args.resume, resume=True, progress=progress)
        return Path(args.resume)
    overrides = list(args.set)
    if args.backbone is not None:
        overrides.append(f"agent.backbone={args.backbone}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.steps is not None:
        overrides.append(f"train.env_steps={args.steps}")
    config = resolve_online_config(algo, args.env, args.config, overrides)
    run_dir = args.run_dir
    if run_dir is None:
        name = str(config["env_id"]).replace("/", "-")
        backbone = config["agent"].get("backbone", "")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = f"runs/{algo}-{name}-{backbone}-s{config['seed']}-{stamp}".replace("--", "-")
    print(f"run: {run_dir}  (TensorBoard: tensorboard --logdir {run_dir}/tb)")
    train_online_run(run_dir, config, progress=progress)
    print(f"done. Evaluate with: seqrl eval {run_dir} --episodes 100 --num-envs 20")
    return Path(run_dir)
