from __future__ import annotations

import subprocess
import sys

from seqrl.cli import main


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "eval" in out and "usage: seqrl COMMAND" in out


def test_unknown_command_is_one_line_error(capsys):
    assert main(["evl"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean `seqrl eval`" in err


def test_unknown_env_id_is_one_line_error_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "seqrl", "eval", "random", "--env", "Hoper-v5"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown environment id 'Hoper-v5'" in proc.stderr and "Hopper-v5" in proc.stderr


def test_eval_random_prints_normalized_score(capsys):
    assert main(["eval", "random", "--env", "Hopper-v5", "--episodes", "2", "--num-envs", "2"]) == 0
    assert "normalized score" in capsys.readouterr().out


def test_collect_then_datasets_lists_and_shows_it(tmp_path, capsys):
    out = tmp_path / "cartpole-random.hdf5"
    args = ["collect", "--env", "CartPole-v1", "--policy", "random", "--episodes", "3"]
    assert main([*args, "--num-envs", "2", "--out", str(out)]) == 0
    assert "wrote 3 episodes" in capsys.readouterr().out
    assert main(["datasets", "--root", str(tmp_path), "--path", str(out)]) == 0
    listing = capsys.readouterr().out
    assert "cartpole-random.hdf5" in listing and "d4rl-hdf5" in listing
    assert main(["datasets", "show", str(out)]) == 0
    assert "episodes     3" in capsys.readouterr().out


def test_collect_needs_exactly_one_policy_source(tmp_path, capsys):
    out = str(tmp_path / "x.hdf5")
    assert main(["collect", "--env", "CartPole-v1", "--out", out]) == 2
    assert "exactly one of --policy" in capsys.readouterr().err
    assert main(["datasets", "list", "extra"]) == 2
    assert "seqrl datasets show ID_OR_PATH" in capsys.readouterr().err
