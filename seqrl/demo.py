"""`make demo`: the main job on the embedded default dataset.

Trains a small Decision Transformer on `seqrl/data/hopper-medium-demo.hdf5` (80 Hopper-v5 episodes
recorded with `seqrl collect` from the shared medium SB3 PPO policy; recipe in
experiments/datasets/README.md), evaluates it over parallel envs, prints the normalized score and
writes TensorBoard logs, metrics.jsonl, checkpoints and curves.png into the run directory.

Equivalent command line:

    seqrl train dt --dataset seqrl/data/hopper-medium-demo.hdf5 --set env_id=Hopper-v5 \\
        --set agent.width=64 --set agent.layers=2 --set agent.heads=2 ... (see DEMO_SETTINGS)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from seqrl.buffers import load_dataset
from seqrl.train.plot import plot_run
from seqrl.train.runs import reference_for, resolve_config, train_run

DEMO_DATASET = Path(__file__).parent / "data" / "hopper-medium-demo.hdf5"
DEMO_SETTINGS = [
    "env_id=Hopper-v5",
    "agent.width=64",
    "agent.layers=2",
    "agent.heads=2",
    "agent.lr=3e-4",
    "agent.warmup_steps=300",
    "policy.target_return=1800",
    "train.steps=2000",
    "train.log_every=50",
    "train.eval_every=500",
    "train.eval_episodes=20",
    "train.eval_num_envs=10",
    "train.checkpoint_every=500",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="updates (default 2000)")
    parser.add_argument("--run-dir", default=None, help="default runs/demo-TIME")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = DEMO_SETTINGS + ([f"train.steps={args.steps}"] if args.steps else [])
    run_dir = Path(args.run_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    store = load_dataset(DEMO_DATASET)
    reference = reference_for(store, "Hopper-v5")
    data_score = float(np.mean(reference.normalize(store.episode_returns))) if reference else None
    config = resolve_config("dt", str(DEMO_DATASET), None, settings)
    agent = config["agent"]
    print(
        f"seqrl demo: Decision Transformer (width {agent['width']}, {agent['layers']} layers, "
        f"context {agent['context_len']}) on {DEMO_DATASET.name}: {store.num_episodes} episodes, "
        f"{store.num_steps} steps, mean return {store.episode_returns.mean():.1f}"
        + (f" (normalized {data_score:.1f})" if data_score is not None else "")
    )
    print(f"run directory: {run_dir}   (tensorboard --logdir {run_dir}/tb)")
    start = time.perf_counter()
    metrics = train_run(run_dir, config, store=store)
    minutes = (time.perf_counter() - start) / 60
    print(
        f"\nafter {config['train']['steps']} updates ({minutes:.1f} min), "
        f"{config['train']['eval_episodes']} episodes, target return {config['policy']['target_return']:g}:"
    )
    print(
        f"  return            {metrics['eval/return_mean']:.1f} ± {metrics['eval/return_std']:.1f}"
    )
    if "eval/normalized_score" in metrics:
        print(
            f"  normalized score  {metrics['eval/normalized_score']:.1f} ± "
            f"{metrics['eval/normalized_score_std']:.1f}   (dataset episodes: {data_score:.1f})"
        )
    print(f"  curves            {plot_run(run_dir)}")
    print(f"  evaluate again    seqrl eval {run_dir} --episodes 100 --num-envs 20")


if __name__ == "__main__":
    main()
