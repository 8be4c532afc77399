"""Assemble an offline training run from a dataset and a config: what `seqrl train ALGO` does.

The resolved config written to `RUN_DIR/config.yaml` holds everything needed to rebuild the
agent and continue or evaluate the run:

```yaml
algo: dt
dataset: seqrl-bench/hopper/medium-v0
env_id: Hopper-v5          # evaluation env (default: the dataset's)
seed: 0
reference: {min_score: 13.1, max_score: 3269.5}   # or null
spec: {obs_shape: [11], action_dim: 3, ...}        # from the env's spaces
agent: {...}               # every field of the algorithm's config dataclass
train: {...}               # every field of OfflineConfig
```

"window" agents (see `seqrl.agents.AgentEntry.batch`) are fed by a `WindowSampler` built from
their config's `context_len`, `batch_size`, `return_scale` and `max_timestep` fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from seqrl.agents import get_agent_entry
from seqrl.buffers import EpisodeStore, WindowSampler, load_dataset
from seqrl.checkpoint import run_config, save_config
from seqrl.config import from_dict, resolve_run_config
from seqrl.core import EnvSpec
from seqrl.envs import ReferenceScores, d4rl_reference_scores, make_env, seed_everything
from seqrl.train.offline import EvalTarget, OfflineConfig, train_offline


def reference_for(store: EpisodeStore, env_id: str | None) -> ReferenceScores | None:
    """The dataset's own reference scores, else D4RL's for the env's task, else None."""
    meta = store.metadata
    if meta.ref_min_score is not None and meta.ref_max_score is not None:
        return ReferenceScores(meta.ref_min_score, meta.ref_max_score, meta.dataset_id or "")
    return d4rl_reference_scores(env_id) if env_id else None


def spec_for(store: EpisodeStore, env_id: str | None) -> EnvSpec:
    """The spaces a model is built for: the env's (checked against the data), else the data's."""
    if env_id is not None:
        env = make_env(env_id)
        try:
            store.check_spaces(env.observation_space, env.action_space, env_id)
            return EnvSpec.from_spaces(env.observation_space, env.action_space)
        finally:
            env.close()
    meta = store.metadata
    if meta.observation_space is not None and meta.action_space is not None:
        return EnvSpec.from_spaces(meta.observation_space, meta.action_space)
    if store.discrete_actions:
        num_actions = int(store.actions.max()) + 1
        return EnvSpec(tuple(store.observation_shape), num_actions, discrete=True)
    low = store.actions.reshape(store.num_steps, -1).min(0)
    high = store.actions.reshape(store.num_steps, -1).max(0)
    return EnvSpec(tuple(store.observation_shape), low.size, False, tuple(low), tuple(high))


def resolve_config(
    algo: str,
    dataset: str | None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Preset file + `--set` overrides -> a config dict with `agent` and `train` validated."""
    entry = get_agent_entry(algo)
    base = {"algo": algo, "dataset": None, "env_id": None, "seed": 0, "agent": {}, "train": {}}
    config = resolve_run_config(
        base, config_file, overrides, entry.config_cls, OfflineConfig, {"dataset": dataset}
    )
    if not config.get("dataset"):
        raise ValueError(
            "no dataset: pass --dataset ID_OR_PATH (a Minari id, folder or .hdf5 file)"
        )
    return config


def make_sampler(entry_batch: str, agent_config: Any, store: EpisodeStore, seed: int) -> Any:
    """The sampler that feeds an agent of this batch kind."""
    if entry_batch == "window":
        max_timestep = getattr(agent_config, "max_timestep", None)
        return WindowSampler(
            store,
            context_len=agent_config.context_len,
            batch_size=agent_config.batch_size,
            seed=seed,
            return_scale=getattr(agent_config, "return_scale", 1.0),
            max_timestep=None if max_timestep is None else max_timestep - 1,
        )
    raise ValueError(f"offline training does not support {entry_batch!r} agents")


def train_offline_run(
    run_dir: str | Path,
    config: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    store: EpisodeStore | None = None,
) -> dict[str, float]:
    """Train (or with `resume`, continue) the run in `run_dir`; returns the final metrics.

    `config` comes from `resolve_config`; on resume it is read from the run directory.
    """
    run_dir = Path(run_dir)
    config = run_config(run_dir, config, resume)
    entry = get_agent_entry(config["algo"])
    store = store if store is not None else load_dataset(config["dataset"])
    env_id = config.get("env_id") or store.metadata.env_id
    agent_config = from_dict(entry.config_cls, config["agent"], "agent")
    train_config = from_dict(OfflineConfig, config["train"], "train")
    spec = spec_for(store, env_id)
    reference = reference_for(store, env_id)
    seed = int(config["seed"])
    if not resume:
        config = {
            **config,
            "env_id": env_id,
            "spec": spec.to_dict(),
            "reference": None
            if reference is None
            else {"min_score": reference.min_score, "max_score": reference.max_score},
            "dataset_summary": {
                "episodes": store.num_episodes,
                "steps": store.num_steps,
                "return_mean": float(np.mean(store.episode_returns)),
            },
        }
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(run_dir, config)
    seed_everything(seed)
    agent = entry.agent_cls(
        agent_config, spec, obs_mean=store.observation_mean, obs_std=store.observation_std
    )
    sampler = make_sampler(entry.batch, agent_config, store, seed)
    target = None if env_id is None else EvalTarget(env_id, reference)
    return train_offline(agent, sampler, run_dir, train_config, target, resume, progress)
