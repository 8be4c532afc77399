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
