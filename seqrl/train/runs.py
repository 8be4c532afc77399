"""Assemble a training run from a config: what `seqrl train ALGO` does, for either loop.

The resolved config written to `RUN_DIR/config.yaml` holds everything needed to rebuild the
agent and continue or evaluate the run:

```yaml
algo: NAME                 # the registry name
dataset: seqrl-bench/hopper/medium-v0   # offline runs
dataset_tail: truncate     # offline: a last episode without an end flag is truncate|drop|error
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

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from seqrl.agents import AgentEntry, get_agent_entry
from seqrl.buffers.validation import actions_outside_bounds
from seqrl.checkpoint import (
    clean_leftovers,
    find_checkpoint,
    has_config,
    load_config,
    run_lock,
    save_config,
)
from seqrl.config import apply_overrides, from_dict, resolve_run_config, to_dict
from seqrl.core import EnvSpec, Loop
from seqrl.envs import ReferenceScores, make_env, reference_scores_for, seed_everything
from seqrl.train.compiled import prepare_agent
from seqrl.train.distributed import SINGLE, World, distributed_world
from seqrl.train.offline import EvalTarget, OfflineConfig, train_offline
from seqrl.train.online import OnlineConfig, train_online

LOOP_CONFIGS: dict[Loop, type] = {Loop.OFFLINE: OfflineConfig, Loop.ONLINE: OnlineConfig}
DATASET_TAILS = ("truncate", "drop", "error")
"""What an offline run does with a dataset's last episode when it has no end flag."""
RESUMABLE = (
    "train.steps",
    "train.eval_every",
    "train.eval_episodes",
    "train.eval_num_envs",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.skip_nonfinite",
    "compile",
    "policy.",
)
"""Settings `--resume` may change (prefixes): the budget, the schedules and the evaluation
policy's options. Everything else would make the run a different one."""


def reference_for(store: Any, env_id: str | None = None) -> ReferenceScores | None:
    """The dataset's reference scores: its own, else D4RL's for a D4RL dataset, else None
    (`seqrl.envs.scores.reference_scores_for`; `env_id` is not used: v5 envs are not D4RL's)."""
    return reference_scores_for(store.metadata)


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
    dataset_tail: str | None = None,
) -> dict[str, Any]:
    """Defaults + preset file + command-line values + `--set` overrides -> a run config with
    `agent`, `policy` and `train` validated and completed. Offline agents need a dataset,
    online agents an env. `dataset_tail` (offline): what to do with a last episode that has no
    end flag, as D4RL's files capped at 1M steps have (`DATASET_TAILS`)."""
    entry = get_agent_entry(algo)
    base: dict[str, Any] = {"algo": algo}
    if entry.loop is Loop.OFFLINE:
        base["dataset"] = None
        base["dataset_tail"] = "truncate"
    base.update({"env_id": None, "env_kwargs": {}, "seed": 0, "agent": {}, "policy": {}})
    base["compile"] = False  # torch.compile update's forward and act (seqrl.train.compiled)
    base["train"] = {}
    config = resolve_run_config(
        base,
        config_file,
        overrides,
        entry.config_cls,
        LOOP_CONFIGS[entry.loop],
        {"dataset": dataset, "env_id": env_id, "dataset_tail": dataset_tail},
    )
    if entry.loop is Loop.OFFLINE and config["dataset_tail"] not in DATASET_TAILS:
        raise ValueError(
            f"dataset_tail {config['dataset_tail']!r} is not one of {', '.join(DATASET_TAILS)}. "
            "Fix: --dataset-tail truncate (keep the unfinished last episode as truncated), drop "
            "(leave it out) or error"
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
    overrides: list[str] | None = None,
    algo: str | None = None,
) -> dict[str, float]:
    """Train (or with `resume`, continue) the run in `run_dir`; returns the final metrics.

    `config` comes from `resolve_config`; on resume it is read from the run directory, `algo`
    (if given) must match it, and `overrides` (`--set` items) may change the settings in
    `RESUMABLE` (e.g. `train.steps=N` extends a finished run). `store` (offline) saves loading
    the dataset again when the caller has it. The run directory is locked while training.
    """
    run_dir = Path(run_dir)
    # under torchrun: rank 0 alone checks, locks and writes the run directory; the other ranks
    # take its resolved config (seqrl.train.distributed)
    with distributed_world() as world:
        if resume and world.is_main:
            config = load_config(run_dir)  # "not a run directory" before anything is created
        with run_lock(run_dir) if world.is_main else contextlib.nullcontext():
            if resume and world.is_main:
                config = resume_config(run_dir, config, overrides or [], algo)
            elif world.is_main:
                _check_new_run(run_dir, config)
            config = world.broadcast(config)
            entry = get_agent_entry(config["algo"])
            if entry.loop is Loop.OFFLINE:
                return _train_offline_run(entry, run_dir, config, resume, progress, store, world)
            if world.distributed:
                raise ValueError(
                    f"{config['algo']} trains online; data-parallel training under torchrun is "
                    "for offline agents. Fix: run `seqrl train` as one process"
                )
            return _train_online_run(entry, run_dir, config, resume, progress)


def _check_new_run(run_dir: Path, config: dict[str, Any] | None) -> None:
    """A new run may start where no run is, or where one never reached a checkpoint."""
    if config is None:
        raise ValueError("a new run needs a config (resolve it from a preset and --set first)")
    if not has_config(run_dir):
        return
    choice = find_checkpoint(run_dir)
    if choice.folder is not None:
        raise FileExistsError(
            f"{run_dir} already holds a run (checkpoint at step {choice.step}); continue it "
            f"with --resume {run_dir} (add --steps N to extend it) or choose another --run-dir"
        )
    clean_leftovers(run_dir)
    print(f"{run_dir} holds a run that never reached a checkpoint: starting it over")


def resume_config(
    run_dir: Path, config: dict[str, Any], overrides: list[str], algo: str | None = None
) -> dict[str, Any]:
    """The saved config with the `--resume` overrides applied; refuses any that would make it
    a different run (see `RESUMABLE`), and saves the changed config."""
    if algo is not None and algo != config["algo"]:
        raise ValueError(
            f"{run_dir} is a {config['algo']} run, not {algo}. Fix: seqrl train "
            f"{config['algo']} --resume {run_dir}"
        )
    entry = get_agent_entry(config["algo"])
    changed = apply_overrides(config, overrides)
    for key in changed:
        if key not in config:
            raise ValueError(f"unknown setting {key}; valid: {', '.join(config)}")
    for section, cls in (("agent", entry.config_cls), ("train", LOOP_CONFIGS[entry.loop])):
        from_dict(cls, changed[section], section)  # typos and out-of-range values
    from_dict(entry.options_cls, changed.get("policy"), "policy")
    diffs = _differences(config, changed)
    refused = [key for key in diffs if not key.startswith(RESUMABLE)]
    if refused:
        key = refused[0]
        raise ValueError(
            f"{key} cannot change on --resume (the run was trained with {diffs[key][0]!r}): "
            f"only {', '.join(k.rstrip('.') + ('*' if k.endswith('.') else '') for k in RESUMABLE)} "
            "may. Fix: start a new run (--run-dir NEW) for other settings"
        )
    if diffs:
        for key, (old, new) in diffs.items():
            print(f"resume: {key} {old!r} -> {new!r}")
        save_config(run_dir, changed)
    return changed


def _differences(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Flattened `key: (old, new)` for every setting that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for key in dict.fromkeys([*old, *new]):
            out.update(_differences(old.get(key), new.get(key), f"{prefix}{key}."))
        return out
    return {} if old == new else {prefix.rstrip("."): (old, new)}


def _start(run_dir: Path, config: dict[str, Any], resume: bool, extra: dict[str, Any]) -> None:
    """Write a new run's config (with what the run found out: spec, reference, ...)."""
    if not resume:
        config.update(extra)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(run_dir, config)
    seed_everything(int(config["seed"]))


def _train_offline_run(
    entry: AgentEntry,
    run_dir: Path,
    config: dict[str, Any],
    resume: bool,
    progress: bool,
    store: Any,
    world: World = SINGLE,
) -> dict[str, float]:
    from seqrl.buffers import load_dataset

    if store is None:
        tail = config.get("dataset_tail", "error")
        store = load_dataset(config["dataset"], incomplete_last_episode=tail)
        if "last_episode" in store.metadata.extra:
            print(f"dataset {config['dataset']}: {store.metadata.extra['last_episode']} "
                  "(--dataset-tail truncate|drop|error chooses)")  # fmt: skip
    env_id = config.get("env_id") or store.metadata.env_id
    agent_config = from_dict(entry.config_cls, config["agent"], "agent")
    train_config = from_dict(OfflineConfig, config["train"], "train")
    spec = spec_for(store, env_id)
    outside = actions_outside_bounds(store.actions, spec.action_low, spec.action_high)
    if outside and not resume:
        print(
            f"warning: {outside} of {store.num_steps} dataset actions lie outside the env's "
            f"action bounds [{min(spec.action_low or [0])}, {max(spec.action_high or [0])}]; "
            "the policy can only act inside them"
        )
    reference = reference_for(store, env_id)
    summary = {
        "episodes": store.num_episodes,
        "steps": store.num_steps,
        "return_mean": float(np.mean(store.episode_returns)),
    }
    extra = {
        "env_id": env_id,
        "spec": spec.to_dict(),
        "reference": None if reference is None else reference.to_dict(),
        "dataset_summary": summary,
    }
    _start(run_dir, config, resume or not world.is_main, extra)  # rank 0 writes the config
    seed = int(config["seed"])
    agent = entry.agent_cls(agent_config, spec, store.stats())  # same weights on every rank
    if world.distributed:  # then each rank its own dropout stream and batches
        seed_everything(world.rank_seed(seed))
    assert entry.make_sampler is not None  # checked by AgentEntry
    sampler = entry.make_sampler(agent_config, store, world.rank_seed(seed))
    say = print if world.is_main else (lambda line: None)
    agent = prepare_agent(agent, spec.obs_shape, bool(config.get("compile")), say)
    target = None
    if env_id is not None:
        env_kwargs = dict(config.get("env_kwargs") or {})
        target = EvalTarget(env_id, reference, dict(config.get("policy") or {}), env_kwargs)
    return train_offline(
        agent, sampler, run_dir, train_config, target, resume, progress, world=world
    )


def _train_online_run(
    entry: AgentEntry, run_dir: Path, config: dict[str, Any], resume: bool, progress: bool
) -> dict[str, float]:
    agent_config = from_dict(entry.config_cls, config["agent"], "agent")
    train_config = from_dict(OnlineConfig, config["train"], "train")
    env_kwargs = dict(config.get("env_kwargs") or {})
    spec = env_spec(config["env_id"], env_kwargs)
    _start(run_dir, config, resume, {"spec": spec.to_dict(), "reference": None})
    agent = entry.agent_cls(agent_config, spec)
    agent = prepare_agent(agent, spec.obs_shape, bool(config.get("compile")))
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
