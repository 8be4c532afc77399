"""Assemble a training run from a config: what `seqrl train ALGO` does, for either loop.

The resolved config written to `RUN_DIR/config.yaml` holds everything needed to rebuild the
agent and continue or evaluate the run:

```yaml
algo: NAME                 # the registry name
dataset: seqrl-bench/hopper/medium-v0   # offline runs
env_id: Hopper-v5          # evaluation env (offline; default: the dataset's) or training env
env_kwargs: {}             # passed to gymnasium.make
seed: 0
reference: {min_score: 13.1, max_score: 3269.5}   # or null
spec: {obs_shape: [11], action_dim: 3, ...}        # from the env's spaces
agent: {...}               # every field of the algorithm's config dataclass
policy: {...}              # every policy option (evaluation during training, `seqrl eval`)
train: {...}               # every field of OfflineConfig / OnlineConfig
```

Everything algorithm-specific comes from the agent's registry entry (`seqrl.agents.AgentEntry`):
which loop, the config and policy-options classes, the sampler or rollout settings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from seqrl.agents import AgentEntry, get_agent_entry
from seqrl.checkpoint import run_config, save_config
from seqrl.config import from_dict, resolve_run_config, to_dict
from seqrl.core import EnvSpec, Loop
from seqrl.envs import ReferenceScores, d4rl_reference_scores, make_env, seed_everything
from seqrl.train.offline import EvalTarget, OfflineConfig, train_offline
from seqrl.train.online import OnlineConfig, train_online

LOOP_CONFIGS: dict[Loop, type] = {Loop.OFFLINE: OfflineConfig, Loop.ONLINE: OnlineConfig}


def reference_for(store: Any, env_id: str | None) -> ReferenceScores | None:
    """The dataset's own reference scores, else D4RL's for the env's task, else None."""
    meta = store.metadata
    if meta.ref_min_score is not None and meta.ref_max_score is not None:
        return ReferenceScores(meta.ref_min_score, meta.ref_max_score, meta.dataset_id or "")
    return d4rl_reference_scores(env_id) if env_id else None


def env_spec(env_id: str, env_kwargs: dict[str, Any] | None = None, store: Any = None) -> EnvSpec:
    """The spaces a model is built for: the env's (checked against the data when there is
    some), with a clear error for observations no agent takes."""
    env = make_env(env_id, **(env_kwargs or {}))
    try:
        space = env.observation_space
        if getattr(space, "shape", None) is None:
            hint = ""
            if hasattr(space, "spaces") and "image" in space.spaces:
                hint = f" For MiniGrid use the image-only id seqrl/{env_id} (pip install minigrid)."
            raise ValueError(
                f"{env_id}: observation space {space} is not a Box; agents take array "
                f"observations.{hint}"
            )
        if store is not None:
            store.check_spaces(space, env.action_space, env_id)
        return EnvSpec.from_spaces(space, env.action_space)
    finally:
        env.close()


def spec_for(store: Any, env_id: str | None) -> EnvSpec:
    """The spaces an offline model is built for: the env's (checked against the data), else the
    data's."""
    if env_id is not None:
        return env_spec(env_id, store=store)
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
    dataset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    env_id: str | None = None,
) -> dict[str, Any]:
    """Defaults + preset file + command-line values + `--set` overrides -> a run config with
    `agent`, `policy` and `train` validated and completed. Offline agents need a dataset,
    online agents an env."""
    entry = get_agent_entry(algo)
    base: dict[str, Any] = {"algo": algo}
    if entry.loop is Loop.OFFLINE:
        base["dataset"] = None
    base.update({"env_id": None, "env_kwargs": {}, "seed": 0, "agent": {}, "policy": {}})
    base["train"] = {}
    config = resolve_run_config(
        base,
        config_file,
        overrides,
        entry.config_cls,
        LOOP_CONFIGS[entry.loop],
        {"dataset": dataset, "env_id": env_id},
    )
    config["policy"] = to_dict(from_dict(entry.options_cls, config["policy"], "policy"))
    if entry.loop is Loop.OFFLINE and not config.get("dataset"):
        raise ValueError(
            "no dataset: pass --dataset ID_OR_PATH (a Minari id, folder or .hdf5 file)"
        )
    if entry.loop is Loop.ONLINE and not config.get("env_id"):
        raise ValueError("no environment: pass --env ENV_ID (e.g. --env seqrl/TMaze-v0)")
    return config


def default_run_dir(config: dict[str, Any]) -> Path:
    """runs/ALGO-DATASET_OR_ENV-sSEED-TIME."""
    source = config.get("dataset") or config.get("env_id") or "run"
    name = str(source).rstrip("/").replace("/", "-").removesuffix(".hdf5")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(f"runs/{config['algo']}-{name}-s{config['seed']}-{stamp}")


def train_run(
    run_dir: str | Path,
    config: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    store: Any = None,
) -> dict[str, float]:
    """Train (or with `resume`, continue) the run in `run_dir`; returns the final metrics.

    `config` comes from `resolve_config`; on resume it is read from the run directory. `store`
    (offline) saves loading the dataset again when the caller has it.
    """
    run_dir = Path(run_dir)
    config = run_config(run_dir, config, resume)
    entry = get_agent_entry(config["algo"])
    if entry.loop is Loop.OFFLINE:
        return _train_offline_run(entry, run_dir, config, resume, progress, store)
    return _train_online_run(entry, run_dir, config, resume, progress)


def _start(run_dir: Path, config: dict[str, Any], resume: bool, extra: dict[str, Any]) -> None:
    """Write a new run's config (with what the run found out: spec, reference, ...)."""
    if not resume:
        config.update(extra)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(run_dir, config)
    seed_everything(int(config["seed"]))


def _reference_dict(reference: ReferenceScores | None) -> dict[str, float] | None:
    if reference is None:
        return None
    return {"min_score": reference.min_score, "max_score": reference.max_score}


def _train_offline_run(
    entry: AgentEntry,
    run_dir: Path,
    config: dict[str, Any],
    resume: bool,
    progress: bool,
    store: Any,
) -> dict[str, float]:
    from seqrl.buffers import load_dataset

    store = store if store is not None else load_dataset(config["dataset"])
    env_id = config.get("env_id") or store.metadata.env_id
    agent_config = from_dict(entry.config_cls, config["agent"], "agent")
    train_config = from_dict(OfflineConfig, config["train"], "train")
    spec = spec_for(store, env_id)
    reference = reference_for(store, env_id)
    summary = {
        "episodes": store.num_episodes,
        "steps": store.num_steps,
        "return_mean": float(np.mean(store.episode_returns)),
    }
    extra = {
        "env_id": env_id,
        "spec": spec.to_dict(),
        "reference": _reference_dict(reference),
        "dataset_summary": summary,
    }
    _start(run_dir, config, resume, extra)
    seed = int(config["seed"])
    agent = entry.agent_cls(agent_config, spec, store.stats())
    assert entry.make_sampler is not None  # checked by AgentEntry
    sampler = entry.make_sampler(agent_config, store, seed)
    target = None
    if env_id is not None:
        env_kwargs = dict(config.get("env_kwargs") or {})
        target = EvalTarget(env_id, reference, dict(config.get("policy") or {}), env_kwargs)
    return train_offline(agent, sampler, run_dir, train_config, target, resume, progress)


def _train_online_run(
    entry: AgentEntry, run_dir: Path, config: dict[str, Any], resume: bool, progress: bool
) -> dict[str, float]:
    agent_config = from_dict(entry.config_cls, config["agent"], "agent")
    train_config = from_dict(OnlineConfig, config["train"], "train")
    env_kwargs = dict(config.get("env_kwargs") or {})
    spec = env_spec(config["env_id"], env_kwargs)
    _start(run_dir, config, resume, {"spec": spec.to_dict(), "reference": None})
    agent = entry.agent_cls(agent_config, spec)
    target = EvalTarget(config["env_id"], None, dict(config.get("policy") or {}), env_kwargs)
    return train_online(
        agent,
        config["env_id"],
        run_dir,
        train_config,
        rollout=entry.rollout_settings(agent_config),
        seed=int(config["seed"]),
        env_kwargs=env_kwargs,
        resume=resume,
        progress=progress,
        eval_target=target,
    )
