"""The `seqrl` command: one subcommand per user task, each a typed dataclass parsed by tyro.

`seqrl --help` lists the subcommands; `seqrl CMD --help` shows a command's options with the
docstrings of its fields. User errors (bad ids, missing files, bad values) are printed as one line
naming the fix, with exit status 2; tracebacks are kept for bugs.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import tyro

from seqrl.config import apply_overrides


@dataclass
class EvalArgs:
    """Evaluate a trained run (or a random policy) and print return and normalized score."""

    run: Annotated[str, tyro.conf.Positional]
    """A seqrl run directory (or one of its checkpoint folders), or `random`."""
    env: str | None = None
    """Gymnasium env id (default: the run's evaluation env)."""
    episodes: int = 10
    """Number of complete episodes; episode i starts from seed `seed + i`."""
    num_envs: int = 10
    """Parallel envs."""
    seed: int = 0
    """Seed of the first episode."""
    policy: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """A policy option, repeatable, overriding the run's `policy:` settings (config.yaml), e.g.
    --policy target_return=3600 --policy inference=cache. Unknown names list the valid ones."""


def parse_policy_options(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`--policy k=v` items as a dict (values parsed as YAML)."""
    return apply_overrides({}, list(items), flag="--policy", example="target_return=3600")


def _run_eval(args: EvalArgs) -> None:
    from seqrl.envs import RandomPolicy, ReferenceScores, evaluate, make_env

    num_envs = min(args.num_envs, args.episodes)
    reference = None
    if args.run == "random":
        if args.env is None:
            raise ValueError("`seqrl eval random` needs --env ENV_ID, e.g. --env Hopper-v5")
        if args.policy:
            raise ValueError("--policy options apply to trained runs, not to `random`")
        env_id = args.env
        probe = make_env(env_id)
        policy = RandomPolicy(probe.action_space, num_envs, seed=args.seed)
        probe.close()
        env_kwargs: dict[str, Any] = {}
    else:
        from seqrl.export import load_agent

        agent, config = load_agent(args.run)
        env_id = args.env or config.get("env_id")
        if env_id is None:
            raise ValueError(f"{args.run} records no evaluation env; pass --env ENV_ID")
        if config.get("reference") and env_id == config.get("env_id"):
            reference = ReferenceScores(**config["reference"])
        env_kwargs = dict(config.get("env_kwargs") or {}) if env_id == config.get("env_id") else {}
        options = {**(config.get("policy") or {}), **parse_policy_options(args.policy)}
        policy = agent.policy(num_envs, **options)
    result = evaluate(
        policy,
        env_id,
        args.episodes,
        num_envs,
        args.seed,
        reference,
        progress=True,
        env_kwargs=env_kwargs,
    )
    print(f"{args.run} on {env_id}, seeds {args.seed}..{args.seed + args.episodes - 1}")
    print(result.table())


@dataclass
class TrainArgs:
    """Train an agent: offline agents on a dataset (--dataset), online agents in an env (--env)."""

    dataset: str | None = None
    """Offline agents: Minari id (local root, MINARI_DATASETS_PATH), Minari folder, or
    D4RL-layout .hdf5 file."""
    env: str | None = None
    """Online agents: the Gymnasium env to train in (e.g. seqrl/TMaze-v0). Offline agents: the
    evaluation env (default: the dataset's)."""
    config: str | None = None
    """Preset YAML (see experiments/) with agent/policy/train sections."""
    set: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """Override one setting, repeatable: --set agent.lr=3e-4 --set train.steps=20000."""
    policy: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """Policy option for the evaluations during training, repeatable (same as
    --set policy.NAME=VALUE): --policy target_return=1800."""
    backbone: str | None = None
    """Sequence backbone (same as --set agent.backbone=NAME): gpt, gtrxl, lstm, gru, xlstm, mlp."""
    run_dir: str | None = None
    """Where the run is written (default runs/ALGO-DATASET_OR_ENV-sSEED-TIME)."""
    resume: str | None = None
    """Continue the run in this directory from its latest checkpoint."""
    seed: int | None = None
    """Seed of the run (sampling, initialization, dropout, envs)."""
    steps: int | None = None
    """Step budget (same as --set train.steps=N): updates offline, env steps online."""


def _run_train(algo: str, args: TrainArgs) -> None:
    from seqrl.train.runs import default_run_dir, resolve_config, train_run

    if args.resume is not None:
        train_run(args.resume, resume=True)
        print(f"run: {args.resume}")
        return
    overrides = list(args.set)
    overrides += [f"policy.{item}" for item in args.policy]
    if args.backbone is not None:
        overrides.append(f"agent.backbone={args.backbone}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    config = resolve_config(algo, args.dataset, args.config, overrides, env_id=args.env)
    run_dir = args.run_dir or default_run_dir(config)
    print(f"run: {run_dir}  (TensorBoard: tensorboard --logdir {run_dir}/tb)")
    train_run(run_dir, config)
    print(f"done. Evaluate with: seqrl eval {run_dir} --episodes 100 --num-envs 20")


@dataclass
class PlotArgs:
    """Plot a run's training and evaluation curves to a PNG."""

    run_dir: Annotated[str, tyro.conf.Positional]
    """The run directory."""
    out: str | None = None
    """Output PNG (default RUN_DIR/curves.png)."""


def _run_plot(args: PlotArgs) -> None:
    from seqrl.train.plot import plot_run

    print(plot_run(args.run_dir, args.out))


@dataclass
class CollectArgs:
    """Record a dataset (Minari, or D4RL-layout .hdf5) by running a policy in vector envs."""

    env: str
    """Gymnasium env id, e.g. Hopper-v5."""
    out: str
    """Minari dataset id (written under MINARI_DATASETS_PATH) or a path ending in .hdf5."""
    policy: str | None = None
    """`random`, an SB3 .zip (VecNormalize stats beside it are applied), or a seqrl run dir."""
    episodes: int = 100
    """Complete episodes to record (unbiased: see `seqrl.collect`)."""
    num_envs: int = 4
    """Parallel envs."""
    seed: int = 0
    """Env i's first episode starts from seed + i."""
    stochastic: bool = False
    """Sample SB3 actions instead of taking the deterministic ones."""
    train_sb3: str | None = None
    """Train an SB3 expert first (ppo or sac) and record with it; its checkpoint is kept."""
    steps: int = 100_000
    """Training steps for --train-sb3."""
    sb3_dir: str = "runs/sb3"
    """Where --train-sb3 keeps its checkpoint."""
    ref_min_score: float | None = None
    """Return of a random policy (normalized score 0), stored in the dataset's metadata."""
    ref_max_score: float | None = None
    """Return of an expert (normalized score 100), stored in the dataset's metadata."""
    overwrite: bool = False
    """Replace an existing dataset of the same id / path."""


def _run_collect(args: CollectArgs) -> None:
    from seqrl.collect import collect

    if (args.policy is None) == (args.train_sb3 is None):
        raise ValueError("pass exactly one of --policy POLICY or --train-sb3 ppo|sac")
    result = collect(
        args.env,
        args.policy,
        args.episodes,
        args.out,
        num_envs=args.num_envs,
        seed=args.seed,
        deterministic=not args.stochastic,
        train_sb3_algo=args.train_sb3,
        train_steps=args.steps,
        sb3_dir=args.sb3_dir,
        ref_min_score=args.ref_min_score,
        ref_max_score=args.ref_max_score,
        overwrite=args.overwrite,
    )
    print(result.describe())


@dataclass
class DatasetsArgs:
    """List local datasets with their statistics (`seqrl datasets`), or show one
    (`seqrl datasets show ID_OR_PATH`)."""

    words: Annotated[tuple[str, ...], tyro.conf.Positional] = ()
    """Nothing to list, or `show ID_OR_PATH`."""
    root: str | None = None
    """Minari root to list (default MINARI_DATASETS_PATH or ~/.minari/datasets)."""
    path: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """Also list these folders or .hdf5 files (repeatable)."""


def _run_datasets(args: DatasetsArgs) -> None:
    from seqrl.datasets_catalog import dataset_report, datasets_table

    if not args.words:
        print(datasets_table(args.root, args.path))
    elif args.words[0] == "show" and len(args.words) == 2:
        print(dataset_report(args.words[1]))
    else:
        raise ValueError(
            f"unexpected arguments {' '.join(args.words)!r}: use `seqrl datasets` or "
            "`seqrl datasets show ID_OR_PATH`"
        )


@dataclass(frozen=True)
class Command:
    summary: str
    args: type
    run: Callable[[object], None]


COMMANDS: dict[str, Command] = {
    "train": Command(
        "train an agent: seqrl train ALGO [options] (seqrl train --help lists ALGO)",
        TrainArgs,
        None,
    ),  # type: ignore[arg-type]
    "eval": Command("evaluate a run or a random policy (batched, seeded)", EvalArgs, _run_eval),  # type: ignore[arg-type]
    "collect": Command(
        "record a dataset from a policy (random, SB3 .zip, seqrl run)", CollectArgs, _run_collect
    ),  # type: ignore[arg-type]
    "datasets": Command(
        "list local datasets, or `datasets show ID` for one", DatasetsArgs, _run_datasets
    ),  # type: ignore[arg-type]
    "plot": Command("plot a run's training and evaluation curves (PNG)", PlotArgs, _run_plot),  # type: ignore[arg-type]
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: seqrl COMMAND [options]   (seqrl COMMAND --help for a command's options)", ""]
    lines += ["commands:"] + [f"  {n.ljust(width)}  {c.summary}" for n, c in COMMANDS.items()]
    return "\n".join(lines)


def _train_usage(registry: dict[str, Any]) -> str:
    from seqrl.core import Loop

    width = max(len(name) for name in registry)
    lines = ["usage: seqrl train ALGO [options]   (seqrl train ALGO --help for its options)", ""]
    lines.append("algorithms:")
    for name, entry in sorted(registry.items()):
        needs = "--dataset" if entry.loop is Loop.OFFLINE else "--env"
        lines.append(f"  {name.ljust(width)}  {entry.summary} ({needs})")
    return "\n".join(lines)


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `seqrl` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f"did you mean `seqrl {close[0]}`? " if close else ""
        return _fail("seqrl", f"unknown command {name!r}; {hint}see `seqrl --help`")
    command = COMMANDS[name]
    prog = f"seqrl {name}"
    run = command.run
    if name == "train":
        from seqrl.agents import REGISTRY

        if not rest or rest[0].startswith("-"):
            if rest and rest[0] in ("-h", "--help"):
                print(_train_usage(REGISTRY))
                return 0
            algos = ", ".join(sorted(REGISTRY))
            return _fail(prog, f"name the algorithm: seqrl train ALGO ... (ALGO: {algos})")
        algo, rest = rest[0], rest[1:]
        if algo not in REGISTRY:
            return _fail(prog, f"unknown algorithm {algo!r}; known: {', '.join(sorted(REGISTRY))}")
        prog = f"seqrl train {algo}"
        run = lambda parsed: _run_train(algo, parsed)  # noqa: E731
        description = f"{REGISTRY[algo].summary} ({REGISTRY[algo].loop.value} loop)"
        args = tyro.cli(command.args, args=rest, prog=prog, description=description)
    else:
        args = tyro.cli(command.args, args=rest, prog=prog, description=command.summary)
    try:
        run(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as err:
        return _fail(prog, str(err).splitlines()[0] if str(err) else type(err).__name__)
    except KeyboardInterrupt:
        return _fail(prog, "interrupted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
