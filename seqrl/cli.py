"""The `seqrl` command: one subcommand per user task, each a typed dataclass parsed by tyro.

`seqrl --help` lists the subcommands; `seqrl CMD --help` shows a command's options with the
docstrings of its fields. User errors (bad ids, missing files, bad values) are printed as one line
naming the fix, with exit status 2; so is anything else, marked as an internal error. `--debug`
(anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from seqrl.config import apply_overrides


def _optional(metavar: str) -> Any:
    """tyro metadata: an optional value shown as METAVAR, not `{None}|STR`."""
    return tyro.conf.arg(metavar=metavar, help_behavior_hint="(optional)")


def _repeat(metavar: str) -> Any:
    """tyro metadata: a repeatable option shown as METAVAR."""
    return tyro.conf.arg(metavar=metavar, help_behavior_hint="(repeatable)")


@dataclass
class EvalArgs:
    """Evaluate a trained run (or a random policy) and print return and normalized score."""

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR|random")]
    """A seqrl run directory (or one of its checkpoint folders), or `random`."""
    env: Annotated[str | None, _optional("ENV_ID")] = None
    """Gymnasium env id (default: the run's evaluation env)."""
    episodes: int = 10
    """Number of complete episodes; episode i starts from seed `seed + i`."""
    num_envs: int = 10
    """Parallel envs."""
    seed: int = 0
    """Seed of the first episode."""
    policy: Annotated[tuple[str, ...], tyro.conf.UseAppendAction, _repeat("NAME=VALUE")] = ()
    """A policy option, repeatable, overriding the run's `policy:` settings (config.yaml), e.g.
    --policy target_return=3600 --policy inference=cache. Unknown names list the valid ones."""
    reference: Annotated[str | None, _optional("d4rl|none|MIN,MAX")] = None
    """Reference returns for the normalized score: `d4rl` (D4RL's for the env's task), `none`,
    or `MIN,MAX`. Default: the run's (its dataset's own; D4RL's only for D4RL datasets)."""
    threads: int = 1
    """Torch threads (more are often slower on a busy 2-core machine)."""
    async_envs: bool = False
    """Step the envs in subprocesses, one per env (Gymnasium's AsyncVectorEnv): same episodes
    and returns; faster only where env.step is slow and cores are free."""


def set_threads(threads: int) -> None:
    """`--threads`: torch's intra-op threads (the CLI default is 1)."""
    import torch

    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def parse_policy_options(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`--policy k=v` items as a dict (values parsed as YAML)."""
    return apply_overrides({}, list(items), flag="--policy", example="target_return=3600")


def _run_eval(args: EvalArgs) -> None:
    from seqrl.envs import RandomPolicy, ReferenceScores, evaluate, make_env, parse_reference

    set_threads(args.threads)

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
        from seqrl.export import checkpoint_folder, load_agent

        _, folder = checkpoint_folder(Path(args.run))  # once: the table names what was loaded
        agent, config = load_agent(folder)
        checkpoint_name = folder.name
        env_id = args.env or config.get("env_id")
        if env_id is None:
            raise ValueError(f"{args.run} records no evaluation env; pass --env ENV_ID")
        if config.get("reference") and env_id == config.get("env_id"):
            reference = ReferenceScores(**config["reference"], source="the run's dataset")
        env_kwargs = dict(config.get("env_kwargs") or {}) if env_id == config.get("env_id") else {}
        options = {**(config.get("policy") or {}), **parse_policy_options(args.policy)}
        policy = agent.policy(num_envs, **options)
    if args.reference is not None:
        reference = parse_reference(args.reference, env_id)
    result = evaluate(
        policy,
        env_id,
        args.episodes,
        num_envs,
        args.seed,
        reference,
        progress=True,
        env_kwargs=env_kwargs,
        asynchronous=args.async_envs,
    )
    where = args.run if args.run == "random" else f"{args.run} ({checkpoint_name})"
    print(f"{where} on {env_id}, seeds {args.seed}..{args.seed + args.episodes - 1}")
    if reference is not None:
        print(
            f"normalized with reference returns {reference.min_score:g} (0) / "
            f"{reference.max_score:g} (100) from {reference.source or 'the run'}"
        )
    print(result.table())


@dataclass
class TrainArgs:
    """Train an agent: offline agents on a dataset (--dataset), online agents in an env (--env)."""

    dataset: Annotated[str | None, _optional("ID_OR_PATH")] = None
    """Offline agents: Minari id (local root, MINARI_DATASETS_PATH), Minari folder, or
    D4RL-layout .hdf5 file."""
    env: Annotated[str | None, _optional("ENV_ID")] = None
    """Online agents: the Gymnasium env to train in (e.g. seqrl/TMaze-v0). Offline agents: the
    evaluation env (default: the dataset's)."""
    config: Annotated[str | None, _optional("YAML")] = None
    """Preset YAML (see experiments/) with agent/policy/train sections."""
    set: Annotated[tuple[str, ...], tyro.conf.UseAppendAction, _repeat("KEY=VALUE")] = ()
    """Override one setting, repeatable: --set agent.lr=3e-4 --set train.steps=20000."""
    policy: Annotated[tuple[str, ...], tyro.conf.UseAppendAction, _repeat("NAME=VALUE")] = ()
    """Policy option for the evaluations during training, repeatable (same as
    --set policy.NAME=VALUE): --policy target_return=1800."""
    backbone: Annotated[str | None, _optional("NAME")] = None
    """Sequence backbone (same as --set agent.backbone=NAME): gpt, gtrxl, lstm, gru, xlstm, mlp."""
    run_dir: Annotated[str | None, _optional("DIR")] = None
    """Where the run is written (default runs/ALGO-DATASET_OR_ENV-sSEED-TIME)."""
    resume: Annotated[str | None, _optional("RUN_DIR")] = None
    """Continue the run in this directory from its newest valid checkpoint. --steps N extends
    it; --set may change only the schedules and policy options (anything else is refused)."""
    dataset_tail: Annotated[str | None, _optional("truncate|drop|error")] = None
    """A dataset's last episode without an end flag (D4RL files capped at 1M steps): keep it
    as truncated (default, says so), drop it, or stop with an error."""
    seed: Annotated[int | None, _optional("INT")] = None
    """Seed of the run (sampling, initialization, dropout, envs)."""
    steps: Annotated[int | None, _optional("N")] = None
    """Step budget (same as --set train.steps=N): updates offline, env steps online."""
    threads: int = 1
    """Torch threads (more are often slower on a busy 2-core machine)."""
    compile: bool = False
    """torch.compile the model forward of updates and the policy's act (same as --set
    compile=true); falls back to eager where it cannot compile. Worth it on GPUs."""


def budget_warnings(config: dict[str, Any]) -> list[str]:
    """The agent's schedules that do not fit the run's step budget (`AgentEntry.budget_warnings`)."""
    from seqrl.agents import get_agent_entry
    from seqrl.config import from_dict

    entry = get_agent_entry(config["algo"])
    agent_config = from_dict(entry.config_cls, config["agent"], "agent")
    return entry.budget_warnings(agent_config, int(config["train"]["steps"]))


def _run_train(algo: str, args: TrainArgs) -> None:
    from seqrl.train.runs import default_run_dir, resolve_config, train_run

    set_threads(args.threads)
    overrides = list(args.set)
    overrides += [f"policy.{item}" for item in args.policy]
    if args.backbone is not None:
        overrides.append(f"agent.backbone={args.backbone}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.dataset_tail is not None:
        overrides.append(f"dataset_tail={args.dataset_tail}")
    if args.compile:
        overrides.append("compile=true")
    if args.resume is not None:
        named = {"--dataset": args.dataset, "--env": args.env, "--config": args.config}
        given = [flag for flag, value in {**named, "--run-dir": args.run_dir}.items() if value]
        if given:
            raise ValueError(
                f"{given[0]} cannot be combined with --resume (the run keeps its own); "
                "--resume takes --steps, --set and --policy"
            )
        train_run(args.resume, resume=True, overrides=overrides, algo=algo)
        print(f"run: {args.resume}")
        return
    config = resolve_config(algo, args.dataset, args.config, overrides, env_id=args.env)
    for line in budget_warnings(config):
        print(f"warning: {line}", file=sys.stderr)
    run_dir = args.run_dir or default_run_dir(config)
    print(f"run: {run_dir}  (TensorBoard: tensorboard --logdir {run_dir}/tb)")
    train_run(run_dir, config)
    print(f"done. Evaluate with: seqrl eval {run_dir} --episodes 100 --num-envs 20")


@dataclass
class PlotArgs:
    """Plot a run's training and evaluation curves to a PNG."""

    run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    """The run directory."""
    out: Annotated[str | None, _optional("PNG")] = None
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
    policy: Annotated[str | None, _optional("POLICY")] = None
    """`random`, an SB3 .zip (its `<stem>-obsrms.npz` statistics are applied), or a seqrl run
    dir."""
    episodes: int = 100
    """Complete episodes to record (unbiased: see `seqrl.collect`)."""
    num_envs: int = 4
    """Parallel envs."""
    seed: int = 0
    """Env i's first episode starts from seed + i."""
    stochastic: bool = False
    """Sample SB3 actions instead of taking the deterministic ones."""
    train_sb3: Annotated[str | None, _optional("ppo|sac")] = None
    """Train an SB3 expert first (ppo or sac) and record with it; its checkpoint is kept."""
    steps: int = 100_000
    """Training steps for --train-sb3."""
    sb3_dir: str = "runs/sb3"
    """Where --train-sb3 keeps its checkpoint."""
    ref_min_score: Annotated[float | None, _optional("RETURN")] = None
    """Return of a random policy (normalized score 0), stored in the dataset's metadata."""
    ref_max_score: Annotated[float | None, _optional("RETURN")] = None
    """Return of an expert (normalized score 100), stored in the dataset's metadata."""
    overwrite: bool = False
    """Replace an existing dataset of the same id / path."""
    allow_pickle: bool = False
    """Let an SB3 policy be loaded with pickle (its cloudpickled entries and a
    `vecnormalize.pkl`): pickles can run code, so only for files you trust. Without it nothing
    is unpickled and the statistics come from `<stem>-obsrms.npz`."""
    threads: int = 1
    """Torch threads for seqrl and SB3 policies."""


def _run_collect(args: CollectArgs) -> None:
    from seqrl.collect import collect

    set_threads(args.threads)
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
        allow_pickle=args.allow_pickle,
    )
    print(result.describe())


@dataclass
class DatasetsArgs:
    """List local datasets with their statistics (`seqrl datasets`), or show one
    (`seqrl datasets show ID_OR_PATH`)."""

    words: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="[show ID]")] = ()
    """Nothing to list, or `show ID_OR_PATH`."""
    root: Annotated[str | None, _optional("DIR")] = None
    """Minari root to list (default MINARI_DATASETS_PATH or ~/.minari/datasets)."""
    path: Annotated[tuple[str, ...], tyro.conf.UseAppendAction, _repeat("PATH")] = ()
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


@dataclass
class ExportArgs:
    """Export a run's policy for robots: one single-step graph with every piece of state as an
    explicit input/output, initial_state.npz and policy.json (run it with seqrl.load_exported)."""

    run: Annotated[str, tyro.conf.Positional]
    """A seqrl run directory (its latest checkpoint) or one of its checkpoint folders."""
    format: Literal["onnx", "torchscript"] = "onnx"
    """onnx (ONNX Runtime, opset 17) or torchscript (torch.jit, C++ libtorch)."""
    out: str | None = None
    """Output folder (default RUN/export-FORMAT); an existing export there is replaced."""
    policy: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """A policy option, repeatable, overriding the run's `policy:` settings, e.g.
    --policy inference=cache --policy target_return=1800."""


def _run_export(args: ExportArgs) -> None:
    from seqrl.export_graph import export_policy

    out = export_policy(args.run, args.format, args.out, **parse_policy_options(args.policy))
    print(f"exported to {out} (checked against the agent's step); run it with:")
    print(f"  seqrl.load_exported({str(out)!r})")


@dataclass
class SweepArgs:
    """Run a grid of (preset or dataset) x seeds as separate runs (a bounded local pool, or Ray)
    and summarize them with rliable: mean, median, IQM with 95% bootstrap CIs, per task and in
    aggregate, final and best score, and a plot (seqrl.sweep)."""

    algo: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="ALGO")]
    """A registered offline or online algorithm (seqrl train --help lists them)."""
    out: Annotated[str, tyro.conf.arg(metavar="DIR")]
    """Sweep folder: OUT/TASK/sSEED run directories, logs/, summary.md, runs.csv, aggregate.png."""
    dataset: Annotated[tuple[str, ...], tyro.conf.UseAppendAction, _repeat("ID_OR_PATH")] = ()
    """A task's dataset (repeatable); crossed with every --config."""
    config: Annotated[tuple[str, ...], tyro.conf.UseAppendAction, _repeat("YAML")] = ()
    """A task's preset (repeatable); crossed with every --dataset."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of every task."""
    set: Annotated[tuple[str, ...], tyro.conf.UseAppendAction, _repeat("KEY=VALUE")] = ()
    """A setting for every run, repeatable (as `seqrl train --set`)."""
    steps: Annotated[int | None, _optional("N")] = None
    """Step budget of every run (same as --set train.steps=N)."""
    max_parallel: int = 1
    """Runs at a time (locally; with --ray, at most this many in flight, 0 = no limit)."""
    threads: int = 1
    """Torch threads per run (and CPUs reserved per Ray task)."""
    ray: Annotated[str | None, _optional("ADDRESS")] = None
    """Run on Ray: `local` (start one here), `auto` (the running one) or ray://HOST:10001.
    Needs `pip install 'seqrl[ray]'`; on several machines OUT must be a shared filesystem."""
    reps: int = 10_000
    """Bootstrap resamples for the confidence intervals."""


def _run_sweep(args: SweepArgs) -> None:
    from seqrl.sweep import sweep

    overrides = list(args.set) + ([f"train.steps={args.steps}"] if args.steps else [])
    summary = sweep(
        args.algo,
        args.out,
        args.seeds,
        args.dataset,
        args.config,
        overrides,
        max_parallel=args.max_parallel,
        threads=args.threads,
        ray_address=args.ray,
        reps=args.reps,
    )
    print(summary.read_text())
    print(
        f"summary: {summary}, runs: {summary.parent / 'runs.csv'}, plot: "
        f"{summary.parent / 'aggregate.png'}"
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
    "sweep": Command("run seeds x tasks and summarize them (rliable)", SweepArgs, _run_sweep),  # type: ignore[arg-type]
    "export": Command(
        "export a run's policy as one ONNX / TorchScript step, state explicit",
        ExportArgs,
        _run_export,
    ),  # type: ignore[arg-type]
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


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass (its MRO included), first sentence."""
    import ast
    import inspect
    import itertools
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                text = " ".join(after.value.value.split())
                docs[node.target.id] = text.split(". ")[0].rstrip(".") + "."
    return docs


def settings_help(entry: Any) -> str:
    """The settings of `seqrl train ALGO`, grouped agent / policy / train, with defaults and docs:
    the keys `--set` takes."""
    import dataclasses

    from seqrl.train.runs import LOOP_CONFIGS

    groups = [
        ("agent", entry.config_cls, "--set agent.NAME=VALUE"),
        ("policy", entry.options_cls, "--policy NAME=VALUE or --set policy.NAME=VALUE"),
        ("train", LOOP_CONFIGS[entry.loop], "--set train.NAME=VALUE"),
    ]
    lines = []
    for section, cls, how in groups:
        docs = field_docs(cls)
        defaults = dataclasses.asdict(cls())
        lines.append(f"\n{section} settings ({how}):")
        for name, default in defaults.items():
            key = f"{section}.{name} = {default!r}"
            lines.append(f"  {key:<38} {docs.get(name, '')}".rstrip())
        if not defaults:
            lines.append("  (none)")
    lines.append("\nTop-level: --set seed=N, --set env_id=ENV_ID, --set env_kwargs={...}.")
    return "\n".join(lines)


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `seqrl` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # tracebacks instead of one-line errors
    argv = [arg for arg in argv if arg != "--debug"]
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
        if "-h" in rest or "--help" in rest:
            with contextlib.suppress(SystemExit):
                tyro.cli(command.args, args=["--help"], prog=prog, description=description)
            print(settings_help(REGISTRY[algo]))
            return 0
        args = tyro.cli(command.args, args=rest, prog=prog, description=description)
    else:
        args = tyro.cli(command.args, args=rest, prog=prog, description=command.summary)
    try:
        run(args)
    except KeyboardInterrupt:
        return _fail(prog, "interrupted")
    except Exception as err:
        if debug:
            raise
        return _fail(prog, error_line(err))
    return 0


USER_ERRORS = (ValueError, OSError, ImportError, LookupError, ArithmeticError)
"""What bad input raises (OSError covers missing and unreadable files and a full disk,
ArithmeticError a run stopped at a non-finite loss): printed as one line, status 2."""


def error_line(err: BaseException) -> str:
    """The one line `seqrl` prints for an error; anything else than bad input is a bug and
    says how to get its traceback."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    if isinstance(err, USER_ERRORS):
        return line
    return f"internal error ({type(err).__name__}: {line}); rerun with --debug for the traceback"


if __name__ == "__main__":
    sys.exit(main())
