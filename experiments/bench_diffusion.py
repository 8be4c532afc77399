"""Diffusion Policy: per-action latency and return of each sampler, measured in one run.

For one trained run (a Hopper expert run of `experiments/diffusion/hopper-expert.yaml`), and for
DDPM with every training step, DDIM with 16 / 8 / 4 / 2 steps and DDPM over 16 / 8 strided steps:
- latency: wall time of `policy.act` over 4 * Ta consecutive steps, divided by the steps, at
  B = 1 and B = 32 envs (so chunk sampling is amortized over the Ta actions it serves), plus the
  time of a replanning step alone (the worst case a control loop sees);
- return: mean +- std over `--episodes` Hopper episodes (seeds 0..E-1), and the normalized score.

`--action-horizon N` executes N actions per chunk instead of the run's Ta (every sampler).

    export MINARI_DATASETS_PATH=$(cd ../shared/data/minari && pwd)
    OMP_NUM_THREADS=1 python experiments/bench_diffusion.py runs/diffusion/hopper-expert-s0

Prints a Markdown table; `--json PATH` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from bench_rollout import machine  # experiments/ is on sys.path when run as a script

from seqrl.envs.evaluate import evaluate
from seqrl.envs.scores import ReferenceScores
from seqrl.export import load_agent

SAMPLERS = [
    ("ddpm", None),
    ("ddim", 16),
    ("ddim", 8),
    ("ddim", 4),
    ("ddim", 2),
    ("ddpm", 16),  # DDPM's stochastic posterior over strided steps: cheap like DDIM-16
    ("ddpm", 8),
]


def latency(
    agent, scheduler: str, steps: int | None, num_envs: int, horizon: int | None, repeats: int = 2
):
    """(seconds per act call amortized over 4 chunks, seconds of a replanning call), best of
    `repeats`."""
    action_horizon = horizon or agent.config.action_horizon
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(4 * action_horizon, num_envs, *agent.spec.obs_shape)).astype(np.float32)
    amortized, replan = [], []
    for _ in range(repeats):
        policy = agent.policy(
            num_envs, scheduler=scheduler, inference_steps=steps, action_horizon=horizon
        )
        times = []
        for step_obs in obs:
            start = time.perf_counter()
            policy.act(step_obs)
            times.append(time.perf_counter() - start)
        amortized.append(sum(times) / len(times))
        replan.append(float(np.mean(times[::action_horizon])))
    return min(amortized), min(replan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory (or checkpoint folder) of a diffusion run")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--num-envs", type=int, default=20)
    parser.add_argument("--action-horizon", type=int, default=None, help="default: the run's Ta")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    agent, config = load_agent(args.run)
    reference = config.get("reference")
    scores = ReferenceScores(**reference, source="the run's dataset") if reference else None
    rows = []
    for scheduler, steps in SAMPLERS:
        name = f"{scheduler.upper()}-{steps or agent.config.train_timesteps}"
        one = latency(agent, scheduler, steps, 1, args.action_horizon)
        many = latency(agent, scheduler, steps, 32, args.action_horizon)
        start = time.perf_counter()
        policy = agent.policy(min(args.num_envs, args.episodes), scheduler=scheduler,
                              inference_steps=steps, action_horizon=args.action_horizon)  # fmt: skip
        result = evaluate(policy, config["env_id"], args.episodes, args.num_envs, 0, scores)
        normalized = result.normalized_scores
        rows.append(
            {
                "sampler": name,
                "ms_per_action_b1": one[0] * 1e3,
                "ms_replan_b1": one[1] * 1e3,
                "ms_per_action_b32": many[0] * 1e3,
                "ms_replan_b32": many[1] * 1e3,
                "return_mean": result.mean,
                "return_std": result.std,
                "normalized": None if normalized is None else float(normalized.mean()),
                "eval_s": time.perf_counter() - start,
            }
        )
        print(rows[-1], flush=True)
    info = machine()
    ta = args.action_horizon or agent.config.action_horizon
    print(f"\n{info['cpu']} ({info['cores']} cores, fast bf16: {info['fast_bf16']}), torch "
          f"{info['torch']}, {args.threads} thread(s), load average at the end "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; run {args.run}; Ta = {ta}; "
          f"{args.episodes} episodes per sampler (seeds 0..{args.episodes - 1})\n")  # fmt: skip
    print(
        "| sampler | ms/action B=1 | replan B=1 | ms/action B=32 | replan B=32 | return | normalized |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        norm = "-" if r["normalized"] is None else f"{r['normalized']:.1f}"
        print(
            f"| {r['sampler']} | {r['ms_per_action_b1']:.1f} | {r['ms_replan_b1']:.1f} | "
            f"{r['ms_per_action_b32']:.1f} | {r['ms_replan_b32']:.1f} | "
            f"{r['return_mean']:.0f} ± {r['return_std']:.0f} | {norm} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
