"""Every Python block and every `seqrl ...` command of README.md runs, with tiny budgets.

The README cannot rot: its `bash` / `console` blocks are read in order, each `seqrl` command is
run in-process through `seqrl.cli.main` with its budget shrunk (`tiny_command`), and then every
`python` block is executed in a fresh interpreter with its loop counts shrunk (`tiny_python`).
Runs go to a temporary folder instead of `runs/`, and Minari datasets to a temporary Minari root.
The shared benchmark data (`seqrl-bench/...` ids, ../shared/data) is replaced by the Hopper data
that ships with seqrl, so the test needs nothing outside the repository; commands that need a Ray
cluster are left to tests/test_sweep.py, and the SB3 policy of ../shared/data is used only where
it is present.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEMO_DATA = "seqrl/data/hopper-medium-demo.hdf5"
SB3_ZIP = ROOT.parent / "shared" / "data" / "sb3" / "hopper-ppo-medium.zip"

TRAIN_TINY = {
    "offline": ["--steps", "4", "--set", "train.log_every=2", "--set", "train.checkpoint_every=2"],
    "online": ["--steps", "64", "--set", "train.num_envs=2", "--set", "train.rollout_steps=32"],
}
EVAL_TINY = ["--set", "train.eval_every=0", "--set", "train.eval_episodes=2"]
EVAL_TINY += ["--set", "train.eval_num_envs=2"]


SWEEP_TINY = [
    f"dataset={DEMO_DATA}",
    "env_id=Hopper-v5",
    "train.eval_every=0",
    "train.eval_episodes=2",
    "train.eval_num_envs=2",
    "train.checkpoint_every=2",
]


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S)]


def seqrl_commands(text: str) -> list[str]:
    """Every `seqrl ...` command line of the bash/console blocks (continuations joined,
    comments and `$ ` prompts dropped)."""
    commands = []
    for language, body in fenced_blocks(text):
        if language not in ("bash", "console"):
            continue
        joined = re.sub(r"\s*\\\n\s*", " ", body)
        for line in joined.splitlines():
            line = line.strip()
            if language == "console":  # output lines of a console block are not commands
                if not line.startswith("$ "):
                    continue
                line = line.removeprefix("$ ")
            if line.startswith("seqrl "):
                commands.append(line.split(" #")[0].strip())
    return commands


def _drop(args: list[str], flag: str) -> list[str]:
    """`args` without `flag VALUE` pairs."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        else:
            out.append(arg)
    return out


def _drop_values(args: list[str], flag: str) -> list[str]:
    """`args` without `flag` and every value after it (up to the next option)."""
    if flag not in args:
        return args
    start = args.index(flag)
    end = start + 1
    while end < len(args) and not args[end].startswith("--"):
        end += 1
    return args[:start] + args[end:]


def tiny_command(command: str, runs: Path) -> list[str]:
    """The command's arguments with runs/ moved, shared data swapped and budgets shrunk."""
    command = command.replace("runs/", f"{runs}/")
    command = re.sub(r"\$\{?s\}?\b", "0", command)  # the seed of a `for s in 0 1 2` loop
    args = shlex.split(command)[1:]
    for i, arg in enumerate(args):
        if arg.startswith("seqrl-bench/"):
            args[i] = DEMO_DATA
    if args[0] == "train" and "--resume" not in args:
        from seqrl.agents import REGISTRY

        loop = REGISTRY[args[1]].loop.value
        args = _drop(args, "--steps")
        if "--config" in args and loop == "offline" and "--dataset" not in args:
            preset = (ROOT / args[args.index("--config") + 1]).read_text()
            if "seqrl-bench/" in preset:
                args += ["--dataset", DEMO_DATA]
        args += TRAIN_TINY[loop] + EVAL_TINY
        if "--run-dir" not in args:  # the default runs/NAME-TIME would land in the repository
            args += ["--run-dir", str(runs / f"default-{len(list(runs.iterdir()))}")]
    elif args[0] == "train":
        args = _drop(args, "--steps")
    elif args[0] == "sweep":  # one seed, tiny runs, every task on the shipped data
        args = _drop(_drop(_drop_values(args, "--seeds"), "--steps"), "--max-parallel")
        args += ["--seeds", "0", "--max-parallel", "1", "--steps", "4", "--reps", "100"]
        args += [x for item in SWEEP_TINY for x in ("--set", item)]
    elif args[0] in ("eval", "collect"):
        args = _drop(_drop(args, "--episodes"), "--num-envs")
        args = _drop(args, "--steps") + (["--steps", "300"] if "--train-sb3" in args else [])
        args += ["--episodes", "2", "--num-envs", "2"]
    if args[0] == "collect":  # files next to the runs, SB3 checkpoints too
        out = args.index("--out") + 1
        if args[out].endswith((".hdf5", ".h5")):
            args[out] = str(runs / Path(args[out]).name)
        args += ["--sb3-dir", str(runs / "sb3")]
    return args


def tiny_python(code: str, runs: Path) -> str:
    """A python block with its loops and budgets shrunk and runs/ moved."""
    code = code.replace('"runs/', f'"{runs}/')
    code = re.sub(r"range\(\d[\d_]*\)", "range(3)", code)
    code = re.sub(r"episodes=\d+", "episodes=2", code)
    code = re.sub(r"num_envs=\d+, target", "num_envs=2, target", code)
    code = re.sub(r"policy\((\d+)", "policy(2", code) if "episodes=2" in code else code
    code = re.sub(r"num_envs=\d+\)", "num_envs=2)", code)
    return re.sub(
        r"OnlineConfig\(steps=[\d_]+\)",
        "OnlineConfig(steps=64, num_envs=2, rollout_steps=32, eval_episodes=2, eval_num_envs=2)",
        code,
    )


@pytest.fixture
def readme_env(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    minari = tmp_path / "minari"
    minari.mkdir()
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari))
    return runs


def test_readme_commands_and_python_blocks_run_with_tiny_budgets(readme_env, capsys):
    from seqrl.cli import main

    text = README.read_text()
    commands = seqrl_commands(text)
    assert len(commands) >= 10, "the README lost its commands?"
    for command in commands:
        if "hopper-ppo-medium.zip" in command and not SB3_ZIP.is_file():
            continue  # the shared SB3 policy is not beside this checkout
        if "--ray" in command:
            continue  # needs a Ray cluster; tests/test_sweep.py runs a sweep on a local one
        args = tiny_command(command, readme_env)
        code = main(args)
        err = capsys.readouterr().err
        assert code == 0, f"README command failed: {command}\n  ran: {args}\n  {err[-800:]}"
    blocks = [body for language, body in fenced_blocks(text) if language == "python"]
    assert len(blocks) >= 3
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for body in blocks:
        code = tiny_python(body, readme_env)
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"README block failed:\n{body}\n{done.stderr[-1500:]}"


def test_the_shrinking_really_shrinks(tmp_path):
    """The test above is only fast because of these rewrites; pin them."""
    args = tiny_command("seqrl train dt --config experiments/dt/hopper-medium.yaml", tmp_path)
    assert args[args.index("--steps") + 1] == "4" and DEMO_DATA in args
    args = tiny_command("seqrl eval runs/x --episodes 100 --num-envs 20", tmp_path)
    assert args[-4:] == ["--episodes", "2", "--num-envs", "2"] and str(tmp_path) in args[1]
    args = tiny_command("seqrl sweep dt --config a.yaml --seeds 0 1 2 3 --out runs/s", tmp_path)
    assert args.count("--seeds") == 1 and "3" not in args and args[args.index("--seeds") + 1] == "0"
    assert "range(3)" in tiny_python("for step in range(2000):\n    pass", tmp_path)
    assert seqrl_commands("```bash\nseqrl train dt \\\n    --steps 3  # c\n```") == [
        "seqrl train dt --steps 3"
    ]
