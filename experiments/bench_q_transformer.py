"""Q-Transformer benchmark: Q-Transformer next to DT and BC on the shared Hopper data (issue 11).

Every run goes through the command line (`seqrl train ALGO ...`) with the DT benchmark's budget:
1000 updates, learning-rate warm-up 100, evaluation every 250 updates on 20 episodes (seeds
10000..10019, 20 envs), one torch thread per process, `--workers` processes at a time. Presets:

    q-transformer  experiments/q_transformer/hopper-{dataset}.yaml   (GPT 128 x 3, W = 4, B = 256)
    dt             experiments/dt/hopper-{dataset}.yaml               (GPT 128 x 3, K = 20, B = 64)
    bc             experiments/bc/hopper-medium.yaml --dataset ...    (LSTM 128 x 3, K = 20, B = 64)

Ablations (`--ablations`, Q-Transformer on medium-replay only): the regularizer off
(`agent.conservative_weight=0`) and the Monte-Carlo clamp off (`agent.mc_return_clamp=false`).

    export MINARI_DATASETS_PATH=$(cd ../shared/data/minari && pwd)
    .venv/bin/python experiments/bench_q_transformer.py --seeds 0 1 2 --ablations   # runs + table
    .venv/bin/python experiments/bench_q_transformer.py --collect                   # table only

Run folders are `runs/q_transformer/{name}-{dataset}-s{seed}`; a finished run (its metrics hold
the final step) is not run again, an interrupted one is resumed. Each run's wall time (seconds,
this machine, whatever else was running) is written to `wall_s.txt` in its folder. The table goes
to stdout and, with `--results`, to `table.md` and `results.json` there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUDGET = ["--steps", "1000", "--set", "agent.warmup_steps=100", "--set", "train.eval_every=250"]
BUDGET += ["--set", "train.eval_episodes=20", "--set", "train.eval_num_envs=20"]
BUDGET += ["--set", "train.eval_seed=10000", "--set", "train.checkpoint_every=250"]
STEPS = 1000


@dataclass(frozen=True)
class Variant:
    """One row of the table: an algorithm with its preset and extra settings."""

    name: str
    algo: str
    preset: str  # with {dataset}
    settings: tuple[str, ...] = ()
    pass_dataset: bool = False  # the preset is another dataset's: pass --dataset

    def command(self, dataset: str, seed: int, run_dir: Path) -> list[str]:
        args = [str(REPO / ".venv/bin/seqrl"), "train", self.algo]
        args += ["--config", str(REPO / self.preset.format(dataset=dataset)), "--seed", str(seed)]
        if self.pass_dataset:
            args += ["--dataset", f"seqrl-bench/hopper/{dataset}-v0"]
        args += BUDGET + [x for item in self.settings for x in ("--set", item)]
        return [*args, "--run-dir", str(run_dir), "--threads", "1"]


VARIANTS = {
    "qt": Variant("qt", "q-transformer", "experiments/q_transformer/hopper-{dataset}.yaml"),
    "dt": Variant("dt", "dt", "experiments/dt/hopper-{dataset}.yaml"),
    "bc": Variant("bc", "bc", "experiments/bc/hopper-medium.yaml", pass_dataset=True),
}
ABLATIONS = {
    "ablation-alpha0": Variant(
        "ablation-alpha0",
        "q-transformer",
        "experiments/q_transformer/hopper-{dataset}.yaml",
        ("agent.conservative_weight=0",),
    ),
    "ablation-noclamp": Variant(
        "ablation-noclamp",
        "q-transformer",
        "experiments/q_transformer/hopper-{dataset}.yaml",
        ("agent.mc_return_clamp=false",),
    ),
}


def evaluations(run_dir: Path) -> dict[int, float]:
    """step -> normalized score of every evaluation in a run's metrics."""
    path = run_dir / "metrics.jsonl"
    scores: dict[int, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "eval/normalized_score" in record:
                scores[int(record["step"])] = float(record["eval/normalized_score"])
    return scores


def run_one(variant: Variant, dataset: str, seed: int, out: Path) -> None:
    run_dir = out / f"{variant.name}-{dataset}-s{seed}"
    if STEPS in evaluations(run_dir):
        return
    command = variant.command(dataset, seed, run_dir)
    if (run_dir / "config.yaml").exists():
        command = [*command[:3], "--resume", str(run_dir), "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    log = (out / f"{run_dir.name}.log").open("w")
    subprocess.run(command, check=True, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    (run_dir / "wall_s.txt").write_text(f"{time.perf_counter() - start:.0f}\n")


def table(out: Path, names: list[str], datasets: list[str]) -> tuple[str, dict]:
    """Markdown rows (variant x dataset): final score mean +- std over seeds, per seed, the
    scores at every evaluation, and the mean wall time per run."""
    lines = ["| method | dataset | seeds | score at 1000 updates | per seed | at 250 / 500 / 750 "
             "| wall s / run |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    results: dict = {}
    for name in names:
        for dataset in datasets:
            runs = sorted(out.glob(f"{name}-{dataset}-s*"))
            runs = [r for r in runs if r.is_dir() and STEPS in evaluations(r)]
            if not runs:
                continue
            scores = [evaluations(r) for r in runs]
            final = np.array([s[STEPS] for s in scores])
            walls = [
                float((r / "wall_s.txt").read_text()) for r in runs if (r / "wall_s.txt").exists()
            ]
            steps = [250, 500, 750]
            early = " / ".join(f"{np.mean([s.get(k, np.nan) for s in scores]):.1f}" for k in steps)
            wall = f"{np.mean(walls):.0f}" if walls else "n/a"
            per_seed = ", ".join(f"{x:.1f}" for x in final)
            lines.append(
                f"| {name} | {dataset} | {len(runs)} | **{final.mean():.1f} ± {final.std():.1f}** "
                f"| {per_seed} | {early} | {wall} |"
            )
            results[f"{name}/{dataset}"] = {
                "runs": [r.name for r in runs],
                "scores": scores,
                "final_mean": float(final.mean()),
                "final_std": float(final.std()),
                "wall_s": walls,
            }
    return "\n".join(lines), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=["medium-replay", "medium"])
    parser.add_argument("--variants", nargs="+", default=["qt", "dt", "bc"], choices=VARIANTS)
    parser.add_argument("--ablations", action="store_true", help="also the two ablations")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "runs/q_transformer")
    parser.add_argument("--results", type=Path, default=None, help="write table.md, results.json")
    parser.add_argument("--collect", action="store_true", help="only build the table")
    args = parser.parse_args()
    if "MINARI_DATASETS_PATH" not in os.environ:
        sys.exit("set MINARI_DATASETS_PATH (see ../shared/data/README.md)")
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(VARIANTS[v], d, s) for s in args.seeds for d in args.datasets for v in args.variants]
    if args.ablations:
        jobs += [(a, "medium-replay", s) for s in args.seeds for a in ABLATIONS.values()]
    if not args.collect:
        with ThreadPoolExecutor(args.workers) as pool:
            for future in [pool.submit(run_one, v, d, s, args.out) for v, d, s in jobs]:
                future.result()
    names = [*args.variants, *(ABLATIONS if args.ablations or args.collect else [])]
    markdown, results = table(args.out, names, args.datasets)
    print(markdown)
    if args.results is not None:
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "table.md").write_text(markdown + "\n")
        (args.results / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
