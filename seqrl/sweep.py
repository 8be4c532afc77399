"""`seqrl sweep`: a grid of (preset or dataset) x seeds as independent `seqrl train` runs, then
one summary with rliable's statistics.

```
seqrl sweep dt --dataset D1 --dataset D2 --seeds 0 1 2 --out sweeps/dt
  sweeps/dt/D1/s0, D1/s1, ... one run directory each     (seqrl train dt ... --run-dir)
  sweeps/dt/logs/D1-s0.log                               each run's output
  sweeps/dt/summary.md, runs.csv, aggregate.png          tables per task and in aggregate
```

Runs are subprocesses (`python -m seqrl train ...`, each with `--threads` torch threads), at
most `--max-parallel` at a time on this machine, or Ray tasks on a cluster with `--ray ADDRESS`
(`local` starts a Ray instance here; Ray is the optional extra `seqrl[ray]`, and on several
machines `--out` must be on a filesystem they share). A run directory that already holds a
checkpoint is resumed, so a sweep that was stopped is continued by running it again.

Scores: each run's evaluations logged during training (`eval/normalized_score`, or
`eval/return_mean` for data without reference scores); "final" is the last evaluation, "best"
the highest. Mean, median and the interquartile mean (IQM) come with 95% stratified-bootstrap
confidence intervals computed by `rliable` (Agarwal et al. 2021, "Deep RL at the Edge of the
Statistical Precipice"): per task over its seeds, and in aggregate over the runs x tasks matrix,
resampling runs within each task (extra `seqrl[sweep]`).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqrl.train.logging import read_metrics

SCORE_KEYS = ("eval/normalized_score", "eval/return_mean")
"""The metric a sweep summarizes: the first one the runs logged."""
STATISTICS = ("mean", "median", "IQM")


@dataclass(frozen=True)
class SweepRun:
    """One cell of the grid: a task (preset and/or dataset) and a seed."""

    task: str
    seed: int
    run_dir: Path
    train_args: tuple[str, ...]
    """`seqrl train` arguments for a new run (a run with a checkpoint is resumed instead)."""

    @property
    def name(self) -> str:
        return f"{self.task}-s{self.seed}"

    def command(self, python: str = sys.executable, threads: int = 1) -> list[str]:
        """`python -m seqrl train ...`; `--resume` once the run has written a checkpoint."""
        tail = ["--threads", str(threads)]
        if (self.run_dir / "checkpoints").is_dir():
            resume = ["train", self.train_args[0], "--resume", str(self.run_dir)]
            return [python, "-m", "seqrl", *resume, *tail]
        return [python, "-m", "seqrl", "train", *self.train_args, *tail]


def task_name(config: str | None, dataset: str | None) -> str:
    """`hopper-medium` for a preset experiments/dt/hopper-medium.yaml, the last part of a dataset
    id or path otherwise, both joined when a preset is crossed with datasets."""
    parts = []
    if config is not None:
        parts.append(Path(config).stem)
    if dataset is not None:
        parts.append(Path(dataset.rstrip("/")).name.removesuffix(".hdf5"))
    return "-".join(parts)


def plan_sweep(
    algo: str,
    out: str | Path,
    seeds: Sequence[int],
    datasets: Sequence[str] = (),
    configs: Sequence[str] = (),
    overrides: Sequence[str] = (),
) -> list[SweepRun]:
    """The grid (configs or [None]) x (datasets or [None]) x seeds as runs under `out`."""
    if not datasets and not configs:
        raise ValueError(
            "a sweep needs tasks: pass --dataset ID (repeatable) and/or --config PRESET"
        )
    if not seeds:
        raise ValueError("a sweep needs seeds: e.g. --seeds 0 1 2")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {' '.join(map(str, seeds))}: a seed is repeated")
    out = Path(out)
    runs, tasks = [], set()
    for config in configs or [None]:
        for dataset in datasets or [None]:
            task = task_name(config, dataset)
            if task in tasks:
                raise ValueError(f"two tasks are both named {task!r}; rename a preset or dataset")
            tasks.add(task)
            for seed in seeds:
                run_dir = out / task / f"s{seed}"
                args = [algo, "--seed", str(seed), "--run-dir", str(run_dir)]
                args += ["--config", config] if config is not None else []
                args += ["--dataset", dataset] if dataset is not None else []
                for item in overrides:
                    args += ["--set", item]
                runs.append(SweepRun(task, seed, run_dir, tuple(args)))
    return runs


def check_tasks(
    algo: str, datasets: Sequence[str], configs: Sequence[str], overrides: Sequence[str]
) -> None:
    """Resolve every task's config (preset file, settings, `--set` values) before any run starts:
    a missing preset or a bad setting is one error up front, not a failure per run."""
    from seqrl.train.runs import resolve_config

    for config in configs or [None]:
        for dataset in datasets or [None]:
            try:
                resolve_config(algo, dataset, config, list(overrides))
            except (OSError, ValueError, TypeError) as error:
                where = ", ".join(
                    part
                    for part in (
                        config and f"--config {config}",
                        dataset and f"--dataset {dataset}",
                    )
                    if part
                )
                raise ValueError(f"sweep task ({where}): {error}") from error


# ---- running -----------------------------------------------------------------------------------
def _run_env(threads: int) -> dict[str, str]:
    threads_str = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": threads_str, "MKL_NUM_THREADS": threads_str}


def run_local(
    runs: Sequence[SweepRun],
    out: Path,
    max_parallel: int,
    threads: int = 1,
    say: Callable[[str], None] = print,
) -> dict[str, int]:
    """Run every run as a subprocess, at most `max_parallel` at a time; exit status by name."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    pending, running, status = list(runs), {}, {}
    while pending or running:
        while pending and len(running) < max(max_parallel, 1):
            run = pending.pop(0)
            log = open(out / "logs" / f"{run.name}.log", "w")  # noqa: SIM115 (closed below)
            process = subprocess.Popen(
                run.command(threads=threads),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_run_env(threads),
            )
            running[run.name] = (process, log, time.perf_counter())
        time.sleep(0.2)
        for name, (process, log, start) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            status[name] = process.returncode
            del running[name]
            outcome = "done" if process.returncode == 0 else f"FAILED ({process.returncode})"
            elapsed = time.perf_counter() - start
            say(f"[{len(status)}/{len(runs)}] {name} {outcome} in {elapsed:.1f} s")
    return status


def run_ray(
    runs: Sequence[SweepRun],
    out: Path,
    address: str,
    max_parallel: int | None = None,
    threads: int = 1,
    say: Callable[[str], None] = print,
) -> dict[str, int]:
    """Run every run as a Ray task (one subprocess each, `threads` CPUs reserved) on the cluster
    at `address` ("local": a new Ray instance on this machine; "auto": the running one)."""
    try:
        import ray
    except ImportError:
        raise ImportError("--ray needs Ray: pip install 'seqrl[ray]'") from None
    try:
        ray.init(address=None if address == "local" else address, include_dashboard=False)
    except Exception as err:  # no cluster at the address, no shared memory, ...
        raise RuntimeError(f"Ray could not start at {address!r}: {err}") from err
    try:
        task = ray.remote(num_cpus=threads)(_ray_run)
        (out / "logs").mkdir(parents=True, exist_ok=True)
        pending, futures, status = list(runs), {}, {}
        limit = max_parallel or len(runs)
        while pending or futures:
            while pending and len(futures) < limit:
                run = pending.pop(0)
                log = str((out / "logs" / f"{run.name}.log").resolve())
                future = task.remote(
                    run.task, run.seed, str(run.run_dir), run.train_args, log, threads
                )
                futures[future] = run.name
            done, _ = ray.wait(list(futures), num_returns=1)
            for future in done:
                name = futures.pop(future)
                status[name] = int(ray.get(future))
                outcome = "done" if status[name] == 0 else f"FAILED ({status[name]})"
                say(f"[{len(status)}/{len(runs)}] {name} {outcome} (ray)")
        return status
    finally:
        ray.shutdown()


def _ray_run(
    task: str, seed: int, run_dir: str, train_args: tuple[str, ...], log: str, threads: int
) -> int:
    """What a Ray worker runs: the same subprocess as a local sweep, with the worker's Python."""
    run = SweepRun(task, seed, Path(run_dir), tuple(train_args))
    with open(log, "w") as handle:
        return subprocess.call(
            run.command(sys.executable, threads),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=_run_env(threads),
        )


# ---- scores and summary ------------------------------------------------------------------------
@dataclass
class Scores:
    """Final and best score of every finished run: `final[task][seed]`."""

    metric: str
    final: dict[str, dict[int, float]]
    best: dict[str, dict[int, float]]


def collect_scores(runs: Sequence[SweepRun]) -> Scores:
    """Read each run's evaluations from its metrics.jsonl (runs without one are left out)."""
    evaluations: dict[SweepRun, list[dict[str, float]]] = {}
    for run in runs:
        try:
            records = read_metrics(run.run_dir)
        except FileNotFoundError:
            continue
        evaluations[run] = [r for r in records if any(k in r for k in SCORE_KEYS)]
    logged = [r for records in evaluations.values() for r in records]
    metric = next((k for k in SCORE_KEYS if any(k in r for r in logged)), None)
    if metric is None:
        raise ValueError(
            "no run logged an evaluation (eval/normalized_score or eval/return_mean): give the "
            "runs an evaluation env (the dataset's env_id or --set env_id=ID)"
        )
    final: dict[str, dict[int, float]] = {}
    best: dict[str, dict[int, float]] = {}
    for run, records in evaluations.items():
        values = [float(r[metric]) for r in records if metric in r]
        if values:
            final.setdefault(run.task, {})[run.seed] = values[-1]
            best.setdefault(run.task, {})[run.seed] = max(values)
    return Scores(metric, final, best)


def interval_estimates(
    columns: dict[str, np.ndarray], reps: int, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """rliable's mean, median (of the per-task means) and IQM (pooled) of each (runs, tasks)
    score matrix, with 95% stratified bootstrap confidence intervals: per column, point
    estimates (3,) and intervals (2, 3)."""
    try:
        from rliable import library, metrics
    except ImportError:
        raise ImportError("sweep summaries need rliable: pip install 'seqrl[sweep]'") from None

    def statistics(scores: np.ndarray) -> np.ndarray:
        return np.array(
            [
                metrics.aggregate_mean(scores),
                metrics.aggregate_median(scores),
                metrics.aggregate_iqm(scores),
            ]
        )

    with warnings.catch_warnings():  # arch deprecates the RandomState rliable passes it
        warnings.simplefilter("ignore", FutureWarning)
        return library.get_interval_estimates(
            columns, statistics, reps=reps, random_state=np.random.RandomState(seed)
        )


def _matrix(table: dict[str, dict[int, float]], tasks: list[str], seeds: list[int]) -> np.ndarray:
    return np.array([[table[task][seed] for task in tasks] for seed in seeds])  # (runs, tasks)


def summarize(scores: Scores, reps: int = 10_000) -> list[dict[str, object]]:
    """One row per task and one `aggregate` row (over the seeds every task finished):
    `{"task", "runs", "final": {stat: (point, low, high)}, "best": {...}}`."""
    rows: list[dict[str, object]] = []
    tasks = sorted(scores.final)
    for task in [*tasks, None]:
        if task is None:
            common = set.intersection(*(set(scores.final[t]) for t in tasks)) if tasks else set()
            seeds, names = sorted(common), tasks
        else:
            seeds, names = sorted(scores.final[task]), [task]
        if not seeds:
            continue
        columns = {
            "final": _matrix(scores.final, names, seeds),
            "best": _matrix(scores.best, names, seeds),
        }
        points, intervals = interval_estimates(columns, reps)
        row: dict[str, object] = {"task": task or "aggregate", "runs": len(seeds) * len(names)}
        for column in columns:
            row[column] = {
                stat: (float(points[column][i]), *map(float, intervals[column][:, i]))
                for i, stat in enumerate(STATISTICS)
            }
        rows.append(row)
    return rows


def markdown_summary(title: str, metric: str, rows: list[dict[str, object]]) -> str:
    """Two tables (final and best score), one row per task and the aggregate."""
    lines = [f"# {title}", "", f"Score: `{metric}`; 95% stratified-bootstrap CIs (rliable)."]
    for column, meaning in (("final", "last evaluation"), ("best", "best evaluation")):
        lines += ["", f"## {column} score ({meaning})", ""]
        lines += ["| task | runs | " + " | ".join(f"{s} [95% CI]" for s in STATISTICS) + " |"]
        lines += ["|---|---:|" + "---:|" * len(STATISTICS)]
        for row in rows:
            cells = [
                f"{p:.1f} [{lo:.1f}, {hi:.1f}]"
                for p, lo, hi in (row[column][s] for s in STATISTICS)  # type: ignore[index]
            ]
            lines.append(f"| {row['task']} | {row['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_aggregate(rows: list[dict[str, object]], metric: str, path: Path) -> Path:
    """rliable's interval-estimate plot of the aggregate row: mean, median, IQM for final and
    best scores."""
    import matplotlib

    matplotlib.use("Agg")
    from rliable import plot_utils

    aggregate = next(row for row in rows if row["task"] == "aggregate")
    points = {c: np.array([aggregate[c][s][0] for s in STATISTICS]) for c in ("final", "best")}
    intervals = {
        c: np.array(
            [[aggregate[c][s][1] for s in STATISTICS], [aggregate[c][s][2] for s in STATISTICS]]
        )
        for c in ("final", "best")
    }
    figure, _ = plot_utils.plot_interval_estimates(
        points,
        intervals,
        metric_names=list(STATISTICS),
        algorithms=["final", "best"],
        xlabel=metric,
    )
    figure.savefig(path, bbox_inches="tight", dpi=120)
    return path


def write_summary(out: Path, title: str, runs: Sequence[SweepRun], reps: int) -> Path:
    """summary.md, runs.csv and aggregate.png in `out`; returns summary.md's path."""
    scores = collect_scores(runs)
    rows = summarize(scores, reps)
    with open(out / "runs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["task", "seed", f"final {scores.metric}", f"best {scores.metric}", "run_dir"]
        )
        for run in runs:
            if run.seed in scores.final.get(run.task, {}):
                final, best = scores.final[run.task][run.seed], scores.best[run.task][run.seed]
                writer.writerow([run.task, run.seed, final, best, str(run.run_dir)])
    summary = out / "summary.md"
    summary.write_text(markdown_summary(title, scores.metric, rows))
    plot_aggregate(rows, scores.metric, out / "aggregate.png")
    return summary


def sweep(
    algo: str,
    out: str | Path,
    seeds: Sequence[int],
    datasets: Sequence[str] = (),
    configs: Sequence[str] = (),
    overrides: Sequence[str] = (),
    max_parallel: int = 1,
    threads: int = 1,
    ray_address: str | None = None,
    reps: int = 10_000,
    say: Callable[[str], None] = print,
) -> Path:
    """Run the grid (see the module docstring) and write its summary; returns summary.md.

    Failed runs are left out of the summary, then reported as an error naming their logs."""
    from seqrl.agents import get_agent_entry

    get_agent_entry(algo)  # an unknown name fails here, not in every run
    out = Path(out)
    runs = plan_sweep(algo, out, seeds, datasets, configs, overrides)
    check_tasks(algo, datasets, configs, overrides)
    tasks = sorted({run.task for run in runs})
    where = f"Ray at {ray_address}" if ray_address else f"{max_parallel} at a time"
    say(
        f"sweep {algo}: {len(tasks)} tasks x {len(seeds)} seeds = {len(runs)} runs ({where}) "
        f"-> {out}"
    )
    if ray_address:
        status = run_ray(runs, out, ray_address, max_parallel, threads, say)
    else:
        status = run_local(runs, out, max_parallel, threads, say)
    failed = sorted(name for name, code in status.items() if code != 0)
    finished = [run for run in runs if run.name not in failed]
    title = f"seqrl sweep {algo}: {len(tasks)} tasks x {len(seeds)} seeds"
    summary = write_summary(out, title, finished, reps) if finished else None
    if failed:
        raise ValueError(
            f"{len(failed)} of {len(runs)} runs failed ({', '.join(failed[:3])}"
            f"{', ...' if len(failed) > 3 else ''}): see {out / 'logs'}; run the sweep again to "
            "retry them (finished runs are kept)"
        )
    assert summary is not None
    return summary
