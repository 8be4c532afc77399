"""Latency of every exportable agent's policy on Hopper-v5: torch eager vs ONNX Runtime, 1 thread.

```
python experiments/bench_export.py [--steps 1000] [--rate 125] [--out runs/export/bench]
```

For each agent in the registry: a run on Hopper (offline agents: a few updates on the embedded
`hopper-medium-demo` dataset; online agents: a short run in Hopper-v5; latency does not depend on
training), with the agent's default model size. Then the same fixed-rate control loop
(`experiments/robot_loop.py`) runs twice: in this process with `seqrl.load_policy` (torch eager,
`torch.set_num_threads(1)`), and in a separate process with the ONNX export through
`seqrl.runtime` (NumPy + onnxruntime, `intra_op_num_threads=1`). Prints a markdown table of
p50 / p99 policy latency per step in microseconds. Agents without `export_step` are listed as such.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "experiments")]

from robot_loop import control_loop  # noqa: E402

from seqrl.agents import REGISTRY  # noqa: E402
from seqrl.core import Loop  # noqa: E402
from seqrl.export import load_policy  # noqa: E402
from seqrl.export_graph import export_policy  # noqa: E402
from seqrl.train.runs import resolve_config, train_run  # noqa: E402

DATASET = REPO / "seqrl" / "data" / "hopper-medium-demo.hdf5"
OPTIONS = {"diffusion": {"scheduler": "ddim", "inference_steps": 10}}
"""Policy options of both loops (diffusion: export unrolls DDIM, here 10 steps)."""


def make_hopper_run(name: str, folder: Path) -> Path:
    run_dir = folder / name
    if (run_dir / "checkpoints").is_dir():
        return run_dir
    common = ["train.eval_every=0", "train.eval_episodes=1", "train.eval_num_envs=1"]
    if REGISTRY[name].loop is Loop.OFFLINE:
        settings = [*common, "train.steps=5", "train.checkpoint_every=5", "agent.precision=fp32"]
        if "precision" not in {f for f in REGISTRY[name].config_cls.__dataclass_fields__}:
            settings.remove("agent.precision=fp32")
        config = resolve_config(name, str(DATASET), None, settings)
    else:
        settings = [*common, "train.steps=256", "train.num_envs=2", "train.rollout_steps=128"]
        settings.append("train.checkpoint_every=256")
        config = resolve_config(name, None, None, settings, env_id="Hopper-v5")
    train_run(run_dir, config, progress=False)
    return run_dir


def onnx_loop(folder: Path, rate: float, steps: int) -> dict:
    script = REPO / "experiments" / "robot_loop.py"
    argv = [sys.executable, str(script), str(folder), "--rate", str(rate), "--steps", str(steps)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=125.0)
    parser.add_argument("--out", default="runs/export/bench")
    parser.add_argument("--agents", nargs="*", default=None, help="only these (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    rows = ["| agent | torch eager p50 / p99 (us) | ONNX Runtime p50 / p99 (us) | speed-up p50 |"]
    rows.append("|---|---|---|---|")
    for name, entry in REGISTRY.items():
        if args.agents is not None and name not in args.agents:
            continue
        if entry.export_step is None:
            rows.append(f"| {name} | - | not exportable yet (no export_step) | - |")
            continue
        run = make_hopper_run(name, out)
        options = OPTIONS.get(name, {})
        exported = export_policy(run, "onnx", out / f"{name}-onnx", **options)
        eager = control_loop(load_policy(run, **options), "Hopper-v5", args.rate, args.steps, 0)
        onnx = onnx_loop(exported, args.rate, args.steps)
        speedup = eager["p50_us"] / onnx["p50_us"]
        rows.append(
            f"| {name} | {eager['p50_us']:.0f} / {eager['p99_us']:.0f} | "
            f"{onnx['p50_us']:.0f} / {onnx['p99_us']:.0f} | {speedup:.1f}x |"
        )
        print(rows[-1], flush=True)
    print(
        f"\nHopper-v5, {args.steps} steps at {args.rate:g} Hz, 1 thread, torch {torch.__version__}"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
