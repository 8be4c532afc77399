from __future__ import annotations

import contextlib
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


def test_eval_random_normalizes_only_with_a_reference_it_names(capsys):
    args = ["eval", "random", "--env", "Hopper-v5", "--episodes", "2", "--num-envs", "2"]
    assert main(args) == 0
    assert "normalized score" not in capsys.readouterr().out  # v5 is not D4RL's env
    assert main([*args, "--reference", "d4rl"]) == 0
    out = capsys.readouterr().out
    assert "normalized score" in out and "-20.2723 (0) / 3234.3 (100) from d4rl" in out
    assert main([*args, "--reference", "oops"]) == 2


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


def test_train_help_lists_every_setting_with_its_doc_and_no_none_metavars(capsys):
    import dataclasses

    from seqrl.agents import REGISTRY
    from seqrl.cli import field_docs

    for name, entry in REGISTRY.items():
        assert main(["train", name, "--help"]) == 0
        out = capsys.readouterr().out
        assert "{None}" not in out and "--dataset ID_OR_PATH" in out
        docs = field_docs(entry.config_cls)
        for field in dataclasses.fields(entry.config_cls):
            assert docs.get(field.name), f"{name}: agent.{field.name} has no doc line"
            line = next(x for x in out.splitlines() if x.strip().startswith(f"agent.{field.name} "))
            assert docs[field.name] in line
        assert "train.steps = " in out and "policy settings" in out
    for command in ("eval", "collect", "datasets", "plot"):
        with contextlib.suppress(SystemExit):
            main([command, "--help"])
        assert "{None}" not in capsys.readouterr().out


def test_a_warm_up_longer_than_the_run_is_warned_about_with_the_fix(pendulum_dataset, capsys):
    from seqrl.cli import budget_warnings
    from seqrl.train.runs import resolve_config

    config = resolve_config("dt", str(pendulum_dataset), None, ["train.steps=100"])
    (line,) = budget_warnings(config)
    assert "agent.warmup_steps=10000" in line and "--set agent.warmup_steps=10" in line
    fitting = resolve_config("dt", str(pendulum_dataset), None, ["train.steps=1000",
                             "agent.warmup_steps=100"])  # fmt: skip
    assert budget_warnings(fitting) == []
    online = resolve_config("recurrent-ppo", None, None, ["train.steps=4096",
                            "agent.lr_anneal_steps=1000000"], env_id="CartPole-v1")  # fmt: skip
    assert "--set agent.lr_anneal_steps=4096" in budget_warnings(online)[0]


def test_eval_async_envs_flag_steps_the_envs_in_subprocesses(async_env_spy, capsys):
    tables = []
    for flag in ([], ["--async-envs"]):
        args = ["eval", "random", "--env", "CartPole-v1", "--episodes", "3", "--num-envs", "2"]
        assert main(args + flag) == 0
        tables.append(capsys.readouterr().out)
    assert async_env_spy == [False, True]
    assert tables[1] == tables[0]  # same seeds, same episodes, same table
