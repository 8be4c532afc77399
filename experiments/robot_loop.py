"""A robot's control loop around an exported seqrl policy: NumPy, ONNX Runtime and the simulator.

```
seqrl export RUN_DIR --format onnx --out exports/hopper-dt
python experiments/robot_loop.py exports/hopper-dt --env Hopper-v5 --rate 125 --steps 1000
```

The loop ticks at a fixed control rate (`--rate` Hz; 0 = as fast as possible): read the
observation, run the policy (`seqrl.runtime`, which imports only NumPy and onnxruntime; torch,
seqrl's training code and its models are never imported, `tests/test_runtime.py` runs this file
where importing torch fails), apply the action, sleep until the next tick. It prints the policy's
per-step latency (p50, p99, max, in microseconds), the ticks that overran the period, the
episode returns, and, last, the same as one JSON line for scripts (`experiments/bench_export.py`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from seqrl.runtime import load_exported  # NumPy + onnxruntime only


def control_loop(policy: Any, env_id: str, rate: float, steps: int, seed: int) -> dict:
    """Run `steps` control ticks of `policy` (single env: `reset()`, `act(obs, reward)`) on
    `env_id`; the policy's latency percentiles in microseconds."""
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    policy.reset()
    period = 1.0 / rate if rate > 0 else 0.0
    latencies, returns, episode_return, overruns = [], [], 0.0, 0
    reward = None
    next_tick = time.perf_counter()
    for _ in range(steps):
        start = time.perf_counter()
        action = policy.act(obs, reward)
        latencies.append(time.perf_counter() - start)
        obs, reward, terminated, truncated, _ = env.step(action)
        episode_return += float(reward)
        if terminated or truncated:
            returns.append(episode_return)
            episode_return, reward = 0.0, None
            obs, _ = env.reset(seed=seed + len(returns))
            policy.reset()
        if period:
            next_tick += period
            wait = next_tick - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                overruns += 1
                next_tick = time.perf_counter()
    env.close()
    micros = np.array(latencies) * 1e6
    return {
        "env": env_id,
        "rate_hz": rate,
        "steps": steps,
        "p50_us": float(np.percentile(micros, 50)),
        "p99_us": float(np.percentile(micros, 99)),
        "max_us": float(micros.max()),
        "overruns": overruns,
        "episode_returns": returns,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="an export folder (seqrl export ... --format onnx)")
    parser.add_argument("--env", default="Hopper-v5", help="Gymnasium env id (default Hopper-v5)")
    parser.add_argument("--rate", type=float, default=125.0, help="control rate in Hz; 0 = free")
    parser.add_argument("--steps", type=int, default=1000, help="control ticks to run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    args = parser.parse_args(argv)
    policy = load_exported(args.folder, threads=1)
    result = control_loop(policy, args.env, args.rate, args.steps, args.seed)
    result.update(policy=args.folder, agent=policy.meta["agent"])
    print(
        f"{result['agent']} on {args.env} at {args.rate:g} Hz, {args.steps} steps: policy "
        f"p50 {result['p50_us']:.0f} us, p99 {result['p99_us']:.0f} us, max "
        f"{result['max_us']:.0f} us; {result['overruns']} overruns; "
        f"{len(result['episode_returns'])} episodes"
    )
    loaded = sorted(
        name for name in ("torch", "seqrl.export", "seqrl.agents") if name in sys.modules
    )
    result["imported"] = loaded
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
