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
from typing import Annotated

import tyro


@dataclass
class EvalArgs:
    """Evaluate a policy on a Gymnasium env and print return and normalized score."""

    policy: Annotated[str, tyro.conf.Positional]
    """`random`, or a seqrl run directory."""
    env: str | None = None
    """Gymnasium env id (default: the run's env)."""
    episodes: int = 10
    """Number of complete episodes; episode i starts from seed `seed + i`."""
    num_envs: int = 10
    """Parallel envs."""
    seed: int = 0
    """Seed of the first episode."""


def _run_eval(args: EvalArgs) -> None:
    from seqrl.envs import RandomPolicy, evaluate, make_env

    if args.policy != "random":
        raise ValueError(
            f"cannot load policy {args.policy!r}: only `random` is available until the Decision "
            "Transformer lands; pass `random`"
        )
    if args.env is None:
        raise ValueError("`seqrl eval random` needs --env ENV_ID, e.g. --env Hopper-v5")
    num_envs = min(args.num_envs, args.episodes)
    probe = make_env(args.env)
    policy = RandomPolicy(probe.action_space, num_envs, seed=args.seed)
    probe.close()
    result = evaluate(policy, args.env, args.episodes, num_envs, args.seed, progress=True)
    print(result.table())


@dataclass(frozen=True)
class Command:
    summary: str
    args: type
    run: Callable[[object], None]


COMMANDS: dict[str, Command] = {
    "eval": Command("evaluate a policy on a Gymnasium env (batched, seeded)", EvalArgs, _run_eval),  # type: ignore[arg-type]
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: seqrl COMMAND [options]   (seqrl COMMAND --help for a command's options)", ""]
    lines += ["commands:"] + [f"  {n.ljust(width)}  {c.summary}" for n, c in COMMANDS.items()]
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
    args = tyro.cli(command.args, args=rest, prog=prog, description=command.summary)
    try:
        command.run(args)
    except (ValueError, FileNotFoundError) as err:
        return _fail(prog, str(err).splitlines()[0] if str(err) else type(err).__name__)
    except KeyboardInterrupt:
        return _fail(prog, "interrupted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
