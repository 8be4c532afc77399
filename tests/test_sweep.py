"""`seqrl sweep` (seqrl.sweep): the grid, the scores read from runs, rliable's statistics, and
whole sweeps of 3 seeds on a tiny dataset, locally and on a local Ray instance."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy import stats

from seqrl import sweep as sweep_module
from seqrl.cli import main
from seqrl.sweep import Scores, SweepRun, collect_scores, plan_sweep, summarize, sweep
from tests.buffers.helpers import random_episodes

TINY_RUN = [
    "train.steps=4",
    "train.log_every=2",
    "train.eval_every=2",
    "train.eval_episodes=2",
    "train.eval_num_envs=2",
    "agent.width=16",
    "agent.layers=1",
    "agent.batch_size=8",
    "agent.context_len=4",
]


@pytest.fixture
def scored_dataset(tmp_path):
    """A small Pendulum-v1 dataset with reference returns, so runs log normalized scores."""
    from seqrl.buffers import EpisodeStore, StoreMetadata, save_dataset

    episodes = random_episodes(np.random.default_rng(0), [15, 9, 12, 20], (3,), act_dim=1)
    meta = StoreMetadata(
        env_id="Pendulum-v1", dataset_id="tiny-scored", ref_min_score=-1500.0, ref_max_score=0.0
    )
    path = tmp_path / "tiny-scored.hdf5"
    save_dataset(EpisodeStore.from_episodes(episodes, meta), path)
    return path


def _check_sweep_output(out, seeds=(0, 1, 2)):
    summary = (out / "summary.md").read_text()
    assert "## final score" in summary and "## best score" in summary
    assert "eval/normalized_score" in summary
    rows = [line for line in summary.splitlines() if line.startswith("| tiny-scored |")]
    assert len(rows) == 2 and all(f"| {len(seeds)} |" in row for row in rows)
    assert sum(line.startswith("| aggregate |") for line in summary.splitlines()) == 2
    assert (out / "aggregate.png").stat().st_size > 1000
    lines = (out / "runs.csv").read_text().splitlines()
    assert len(lines) == 1 + len(seeds)
    for seed in seeds:
        assert (out / "tiny-scored" / f"s{seed}" / "checkpoints").is_dir()
        assert (out / "logs" / f"tiny-scored-s{seed}.log").is_file()


# ---- whole sweeps ----------------------------------------------------------------------------
def test_sweep_of_three_seeds_writes_tables_and_plot(tmp_path, scored_dataset, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "dt", "--out", str(out), "--dataset", str(scored_dataset)]
    argv += ["--seeds", "0", "1", "2", "--max-parallel", "2", "--reps", "200"]
    for item in TINY_RUN:
        argv += ["--set", item]
    assert main(argv) == 0, capsys.readouterr().err
    _check_sweep_output(out)
    assert "aggregate" in capsys.readouterr().out
    # the seeds trained differently (own run directories, own seeds)
    finals = [line.split(",")[2] for line in (out / "runs.csv").read_text().splitlines()[1:]]
    assert len(set(finals)) > 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--config", "missing.yaml"], r"--config missing\.yaml.*missing\.yaml not found"),
        (["--set", "agent.no_such_setting=1"], r"no_such_setting"),
    ],
)
def test_a_bad_task_is_refused_before_any_run_starts(
    tmp_path, scored_dataset, capsys, extra, message
):
    out = tmp_path / "sweep"
    argv = ["sweep", "dt", "--out", str(out), "--dataset", str(scored_dataset), "--seeds", "0", "1"]
    assert main([*argv, *extra]) != 0
    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert len(error.strip().splitlines()) == 1, error  # one line, no traceback
    assert not (out / "logs").exists()  # nothing was launched


def test_sweep_on_a_local_ray_instance(tmp_path, scored_dataset):
    pytest.importorskip("ray")
    out = tmp_path / "sweep"
    try:
        sweep(
            "dt",
            out,
            (0, 1, 2),
            [str(scored_dataset)],
            (),
            TINY_RUN,
            max_parallel=0,
            ray_address="local",
            reps=200,
            say=lambda line: None,
        )
    except RuntimeError as err:
        if "Ray could not start" not in str(err):
            raise
        pytest.skip(str(err))  # e.g. no shared memory for Ray's object store
    _check_sweep_output(out)


# ---- pieces ----------------------------------------------------------------------------------
def test_grid_crosses_presets_datasets_and_seeds(tmp_path):
    runs = plan_sweep("dt", tmp_path, [0, 7], ["a/hopper.hdf5", "walker"], ["p/fast.yaml"])
    assert [run.name for run in runs] == [
        "fast-hopper-s0",
        "fast-hopper-s7",
        "fast-walker-s0",
        "fast-walker-s7",
    ]
    assert runs[1].run_dir == tmp_path / "fast-hopper" / "s7"
    command = runs[1].command("python", threads=2)
    assert command[:5] == ["python", "-m", "seqrl", "train", "dt"]
    assert "--seed" in command and "7" in command and command[-2:] == ["--threads", "2"]
    (runs[1].run_dir / "checkpoints").mkdir(parents=True)  # started: resumed, not restarted
    assert runs[1].command("python")[4:7] == ["dt", "--resume", str(runs[1].run_dir)]
    with pytest.raises(ValueError, match="needs tasks"):
        plan_sweep("dt", tmp_path, [0])
    with pytest.raises(ValueError, match="seed is repeated"):
        plan_sweep("dt", tmp_path, [1, 1], ["x"])
    with pytest.raises(ValueError, match="both named"):
        plan_sweep("dt", tmp_path, [0], ["a/x.hdf5", "b/x.hdf5"])


def _fake_run(tmp_path, task, seed, scores):
    run = SweepRun(task, seed, tmp_path / task / f"s{seed}", ("dt",))
    run.run_dir.mkdir(parents=True)
    records = [{"step": 10 * (i + 1), "eval/normalized_score": s} for i, s in enumerate(scores)]
    records.insert(1, {"step": 15, "train/loss": 0.5})
    (run.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_final_and_best_scores_come_from_each_runs_evaluations(tmp_path):
    runs = [
        _fake_run(tmp_path, "a", 0, [10.0, 30.0, 20.0]),
        _fake_run(tmp_path, "a", 1, [5.0, 6.0]),
        _fake_run(tmp_path, "b", 0, [50.0]),
        SweepRun("b", 1, tmp_path / "never-ran", ("dt",)),  # no metrics: left out
    ]
    scores = collect_scores(runs)
    assert scores.metric == "eval/normalized_score"
    assert scores.final == {"a": {0: 20.0, 1: 6.0}, "b": {0: 50.0}}
    assert scores.best == {"a": {0: 30.0, 1: 6.0}, "b": {0: 50.0}}


def test_statistics_are_rliables_with_bootstrap_intervals():
    rng = np.random.default_rng(0)
    final = {task: {s: float(v) for s, v in enumerate(rng.normal(50, 10, 5))} for task in "abc"}
    best = {task: {s: v + 5 for s, v in seeds.items()} for task, seeds in final.items()}
    rows = summarize(Scores("eval/normalized_score", final, best), reps=500)
    assert [row["task"] for row in rows] == ["a", "b", "c", "aggregate"]
    matrix = np.array([[final[t][s] for t in "abc"] for s in range(5)])  # (runs, tasks)
    aggregate = rows[-1]
    assert aggregate["runs"] == 15
    point, low, high = aggregate["final"]["IQM"]
    assert point == pytest.approx(stats.trim_mean(matrix.ravel(), 0.25))
    assert aggregate["final"]["mean"][0] == pytest.approx(matrix.mean())
    assert aggregate["final"]["median"][0] == pytest.approx(np.median(matrix.mean(axis=0)))
    assert low < point < high and high - low < 20
    assert aggregate["best"]["mean"][0] == pytest.approx(matrix.mean() + 5)
    a_mean, a_low, a_high = rows[0]["final"]["mean"]
    assert a_mean == pytest.approx(np.mean(list(final["a"].values())))
    assert a_low < a_mean < a_high


def test_failed_runs_are_reported_after_the_summary_of_the_others(tmp_path, monkeypatch):
    runs = plan_sweep("dt", tmp_path, [0, 1], ["tiny"])
    _fake_run(tmp_path, "tiny", 0, [10.0, 12.0])

    def fake_local(runs, out, max_parallel, threads, say):
        return {"tiny-s0": 0, "tiny-s1": 1}

    monkeypatch.setattr(sweep_module, "run_local", fake_local)
    with pytest.raises(ValueError, match=r"1 of 2 runs failed \(tiny-s1\): see .*logs"):
        sweep("dt", tmp_path, [0, 1], ["tiny"], reps=100, say=lambda line: None)
    assert "| tiny | 1 |" in (tmp_path / "summary.md").read_text()
    assert len(runs) == 2
