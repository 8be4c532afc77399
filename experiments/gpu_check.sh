#!/usr/bin/env bash
# GPU check for seqrl (issue 15): the GPU tests and the figures the README asks for, on one GPU,
# in under 8 minutes. Prints a Markdown report; paste its tables into docs/readme/scale.md.
#
#   bash experiments/gpu_check.sh            # from the repository root, venv in .venv
#
# 1. pytest -m gpu                           (GPU tests; skipped ones say so)
# 2. attention kernels DT runs on CUDA       (profiled: update and act, fp32 and bf16)
# 3. DT act latency, B=1 and B=1024 envs, eager vs torch.compile (inductor, reduce-overhead =
#    CUDA graphs), inference="window" and inference="cache" (sliding-window model)
# 4. a training step's throughput: DT reference size (128 wide, 3 layers, K=20, batch 64),
#    eager vs compiled forward, fp32 and bf16
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

echo "## seqrl GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo; echo "### 1. GPU tests"
timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tail -n 15

echo; echo "### 2-4. attention kernels, act latency, training throughput"
timeout 330 "$PY" - <<'EOF'
import dataclasses
import time

import numpy as np
import torch

from seqrl.agents import DTAgent, DTConfig
from seqrl.agents.examples import example_stats, example_window_batch
from seqrl.core import EnvSpec
from seqrl.train.compiled import CompiledAgent, attention_kernels

assert torch.cuda.is_available(), "no CUDA device"
torch.backends.cuda.matmul.allow_tf32 = True
SPEC = EnvSpec(obs_shape=(11,), action_dim=3, action_low=(-1.0,) * 3, action_high=(1.0,) * 3)
BASE = DTConfig(device="cuda", warmup_steps=1, batch_size=64)


def agent(precision="fp32", **changes):
    torch.manual_seed(0)
    config = dataclasses.replace(BASE, precision=precision, **changes)
    return DTAgent(config, SPEC, example_stats(SPEC))


def sync_time(fn, repeats):
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


print("\n#### attention kernels (profiled)\n")
print("| precision | update | act window | act cache |")
print("|---|---|---|---|")
for precision in ("fp32", "bf16"):
    a = agent(precision, attention_window=6)
    batch = example_window_batch(SPEC, batch=64, context=20).to("cuda")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        a.update(batch)
    names = {e.name.removeprefix("aten::") for e in prof.events()}
    from seqrl.train.compiled import ATTENTION_KERNELS

    update = sorted({v for k, v in ATTENTION_KERNELS.items() if k in names})
    obs = np.zeros((1, 11), np.float32)
    window = attention_kernels(a.policy(1), obs)
    try:
        cache = attention_kernels(a.policy(1, inference="cache"), obs)
    except ValueError as err:
        cache = [f"refused: {err}"]
    print(f"| {precision} | {', '.join(update)} | {', '.join(window)} | {', '.join(cache)} |")

print("\n#### DT act latency (ms per step, 200 steps after 30 warm-up steps)\n")
print("| inference | envs | eager | compiled | speed-up |")
print("|---|---:|---:|---:|---:|")
for inference in ("window", "cache"):
    for envs in (1, 1024):
        a = agent("fp32", attention_window=6)
        rng = np.random.default_rng(0)
        obs = rng.normal(size=(envs, 11)).astype(np.float32)
        reward = np.ones(envs, np.float32)
        times = []
        try:
            for compiled in (False, True):
                owner = CompiledAgent(a, backend="inductor") if compiled else a
                policy = owner.policy(envs, inference=inference)
                for _ in range(30):
                    policy.act(obs, reward)
                times.append(sync_time(lambda: policy.act(obs, reward), 200) * 1e3)
        except Exception as err:  # report, go on
            print(f"| {inference} | {envs} | error: {type(err).__name__}: {str(err)[:80]} | | |")
            continue
        print(f"| {inference} | {envs} | {times[0]:.3f} | {times[1]:.3f} | {times[0] / times[1]:.2f}x |")

print("\n#### training step (DT 128 wide, 3 layers, K=20, batch 64; 100 updates after 20)\n")
print("| precision | eager updates/s | compiled updates/s | compiled samples/s |")
print("|---|---:|---:|---:|")
for precision in ("fp32", "bf16"):
    rates = []
    for compiled in (False, True):
        a = agent(precision)
        owner = CompiledAgent(a, backend="inductor") if compiled else a
        batch = example_window_batch(SPEC, batch=64, context=20).to("cuda")
        for _ in range(20):
            owner.update(batch)
        rates.append(1 / sync_time(lambda: owner.update(batch), 100))
    print(f"| {precision} | {rates[0]:.1f} | {rates[1]:.1f} | {rates[1] * 64:.0f} |")
EOF
status=$?
[ $status -eq 124 ] && echo "(measurements stopped at their 330 s limit)"
echo; echo "done."
