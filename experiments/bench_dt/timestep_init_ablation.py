"""Does the timestep-embedding initialization explain d3rlpy's faster start on small budgets?

seqrl's DT (like the reference kzl/decision-transformer code) leaves `embed_timestep` at
PyTorch's `nn.Embedding` default, N(0, 1); d3rlpy's DT initializes its timestep ("position")
embedding N(0, 0.02) with the GPT blocks. This trains seqrl's default DT with the benchmark's
budget and seeds twice, as is and with only that embedding re-initialized N(0, 0.02) (patched in
at run time), and prints the learning curves side by side.

    .venv/bin/python experiments/bench_dt/timestep_init_ablation.py --seeds 0 --steps 1000
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import shutil
import sys
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments"))
os.environ.setdefault("MINARI_DATASETS_PATH", str(REPO.parent / "shared" / "data" / "minari"))

from seqrl.agents import dt as dt_module  # noqa: E402
from seqrl.train.logging import read_metrics  # noqa: E402
from seqrl.train.runs import train_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_dt" / "timestep-init")
    parser.add_argument("--skip-default", action="store_true", help="only the N(0, 0.02) runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import bench_dt  # the benchmark's config helper: same presets, budget and evaluation

    budget = bench_dt.Budget(
        steps=args.steps, warmup=args.warmup, eval_every=args.eval_every, seeds=len(args.seeds)
    )
    original_init = dt_module.DecisionTransformerModel.__init__

    def small_timestep_init(self, *a, **kw):
        original_init(self, *a, **kw)
        nn.init.normal_(self.embed_timestep.weight, std=0.02)

    curves = {}
    variants = [("N(0, 0.02)", small_timestep_init)]
    if not args.skip_default:
        variants.insert(0, ("N(0, 1) (as is)", original_init))
    for label, init in variants:
        dt_module.DecisionTransformerModel.__init__ = init
        for seed in args.seeds:
            run_dir = args.out / f"{'small' if init is small_timestep_init else 'default'}-s{seed}"
            if run_dir.exists():
                shutil.rmtree(run_dir)
            train_run(run_dir, bench_dt.seqrl_config("seqrl", budget, seed), progress=False)
            curves[(label, seed)] = [
                (int(r["step"]), r["eval/normalized_score"])
                for r in read_metrics(run_dir)
                if "eval/normalized_score" in r
            ]
    dt_module.DecisionTransformerModel.__init__ = original_init
    steps = [step for step, _ in next(iter(curves.values()))]
    print("| timestep embedding init | seed | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("|---|---|" + "---|" * len(steps))
    for (label, seed), curve in curves.items():
        print(f"| {label} | {seed} | " + " | ".join(f"{v:.1f}" for _, v in curve) + " |")


if __name__ == "__main__":
    main()
