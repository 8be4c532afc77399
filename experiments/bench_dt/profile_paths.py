"""Where the time of a DT training step and of a DT policy step goes, and what two candidate
changes to seqrl would buy (measured here by patching them in at run time, not in seqrl/).

    .venv/bin/python experiments/bench_dt/profile_paths.py > experiments/results/dt/profile.md

Prints Markdown:
1. `DTPolicy.act` per-step time by path (window, cache on the default model, cache on a
   sliding-window model) at N = 1, 20, 100 envs, and the top ops of each under torch.profiler;
2. full-causal KV cache: attending over the filled prefix instead of all `max_len` slots
   (`seqrl/nn/gpt.py`, `GPTBlock._attend_with_cache`), same outputs, speed-up at t = 300;
3. training step: fp32 against bf16 autocast (CPUs with AVX512-BF16 / AMX), interleaved blocks;
4. the floor under any evaluation speed-up: the cost of stepping Hopper-v5 itself
   (`seqrl.envs.make_vector_env`, zero actions), per env step at N = 1, 20, 100.

`--only paths,cache,bf16,env` runs a subset.

Random weights and random observations (timing does not depend on them); one torch thread.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault(
    "MINARI_DATASETS_PATH", str(Path(__file__).resolve().parents[3] / "shared" / "data" / "minari")
)

import dataclasses
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from seqrl.agents.dt import DecisionTransformer, DTConfig, dt_loss
from seqrl.core import EnvSpec
from seqrl.nn import gpt
from seqrl.nn.optim import optimizer_step

SPEC = EnvSpec((11,), 3, False, (-1.0,) * 3, (1.0,) * 3)  # Hopper's spaces
PATHS = {
    "window, default DT": (DTConfig(), "window"),
    "cache, default DT (full-causal cache, max_len 3000 tokens)": (DTConfig(), "cache"),
    "cache, sliding-window DT (ring of 60 tokens)": (
        DTConfig(context_len=40, attention_window=20),
        "cache",
    ),
}


def policy_ms(config: DTConfig, inference: str, num_envs: int, t0: int, steps: int) -> float:
    torch.manual_seed(0)
    agent = DecisionTransformer(config, SPEC)
    policy = agent.policy(num_envs=num_envs, target_return=3600.0, inference=inference)
    obs = np.random.default_rng(0).standard_normal((num_envs, 11)).astype(np.float32)
    reward = np.ones(num_envs, dtype=np.float32)
    with torch.inference_mode():
        for _ in range(t0):
            policy.act(obs, reward)
        begin = time.perf_counter()
        for _ in range(steps):
            policy.act(obs, reward)
    return (time.perf_counter() - begin) / steps * 1000


def top_ops(config: DTConfig, inference: str, num_envs: int, steps: int = 10) -> str:
    agent = DecisionTransformer(config, SPEC)
    policy = agent.policy(num_envs=num_envs, target_return=3600.0, inference=inference)
    obs = np.zeros((num_envs, 11), dtype=np.float32)
    with torch.inference_mode():
        for _ in range(30):
            policy.act(obs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                policy.act(obs)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    return ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.0f}%" for e in rows[:4])


def section_paths() -> None:
    print("### DTPolicy.act: ms per step (after 30 steps), top ops at N = 100\n")
    print("| path | N = 1 | N = 20 | N = 100 | top self-CPU ops at N = 100 |")
    print("|---|---|---|---|---|")
    for label, (config, inference) in PATHS.items():
        cells = [f"{policy_ms(config, inference, n, 30, 30):.1f}" for n in (1, 20, 100)]
        print(f"| {label} | {' | '.join(cells)} | {top_ops(config, inference, 100)} |")
    print()


def _sliced_attend(original):
    def attend(self, q, k, v, plan, cache_k, cache_v):
        if plan.write_first and not self.ring:
            self._write(plan, cache_k, cache_v, k, v)
            used = int(plan.end.max())  # longest episode so far, in tokens
            plan = dataclasses.replace(plan, allowed=plan.allowed[..., :used])
            return self._attend(q, cache_k[:, :, :used], cache_v[:, :, :used], plan)
        return original(self, q, k, v, plan, cache_k, cache_v)

    return attend


def section_cache_slice() -> None:
    print("### Full-causal cache: attend over the filled prefix only (patched in)\n")
    print(
        "| envs | episode step | as is, ms / step | prefix only, ms / step | speed-up | max diff |"
    )
    print("|---|---|---|---|---|---|")
    original = gpt.GPTBlock._attend_with_cache
    for num_envs in (20, 100):
        outputs, times = [], []
        for patched in (False, True):
            gpt.GPTBlock._attend_with_cache = _sliced_attend(original) if patched else original
            torch.manual_seed(0)
            agent = DecisionTransformer(DTConfig(), SPEC)
            policy = agent.policy(num_envs=num_envs, target_return=3600.0, inference="cache")
            obs = np.random.default_rng(0).standard_normal((330, num_envs, 11)).astype(np.float32)
            with torch.inference_mode():
                for t in range(300):
                    policy.act(obs[t], np.ones(num_envs, dtype=np.float32))
                begin = time.perf_counter()
                actions = [policy.act(obs[t], np.ones(num_envs)).action for t in range(300, 330)]
            times.append((time.perf_counter() - begin) / 30 * 1000)
            outputs.append(torch.stack(actions))
        gpt.GPTBlock._attend_with_cache = original
        diff = float((outputs[0] - outputs[1]).abs().max())
        print(
            f"| {num_envs} | 300 | {times[0]:.1f} | {times[1]:.1f} | {times[0] / times[1]:.2f}x "
            f"| {diff:.1e} |"
        )
    print()


def section_bf16(rounds: int = 4, block: int = 10) -> None:
    from seqrl.agents.dt import make_sampler
    from seqrl.buffers import load_dataset
    from seqrl.train.runs import spec_for

    store = load_dataset("seqrl-bench/hopper/medium-v0")
    config = DTConfig(warmup_steps=100)
    agent = DecisionTransformer(config, spec_for(store, "Hopper-v5"), store.stats())
    sampler = make_sampler(config, store, 0)

    def bf16_update() -> None:
        agent.model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = dt_loss(agent.model, sampler.sample())
        optimizer_step(
            agent.optim.optimizer,
            loss,
            agent.model.parameters(),
            config.grad_clip,
            agent.optim.scheduler,
        )

    def fp32_update() -> None:
        agent.update(sampler.sample())

    seconds = {"fp32": 0.0, "bf16 autocast": 0.0}
    for step in (fp32_update, bf16_update):
        for _ in range(3):
            step()
    for _ in range(rounds):
        for name, step in (("fp32", fp32_update), ("bf16 autocast", bf16_update)):
            begin = time.perf_counter()
            for _ in range(block):
                step()
            seconds[name] += time.perf_counter() - begin
    print(
        f"### Training step, reference DT size: fp32 vs bf16 autocast ({rounds} x {block} steps)\n"
    )
    print("| precision | steps / s |\n|---|---|")
    for name, total in seconds.items():
        print(f"| {name} | {rounds * block / total:.2f} |")
    print(f"\nbf16 / fp32: {seconds['fp32'] / seconds['bf16 autocast']:.2f}x\n")


def section_env(seconds: float = 3.0) -> None:
    from seqrl.envs.factory import make_vector_env

    print("### Stepping Hopper-v5 alone (SyncVectorEnv, zero actions)\n")
    print("| envs | ms per vector step | us per env step |\n|---|---|---|")
    for num_envs in (1, 20, 100):
        envs = make_vector_env("Hopper-v5", num_envs, autoreset=False)
        envs.reset(seed=list(range(num_envs)))
        action = np.zeros((num_envs, 3), dtype=np.float32)
        begin, count = time.perf_counter(), 0
        while time.perf_counter() - begin < seconds:
            _, _, terminated, truncated, _ = envs.step(action)
            count += 1
            done = terminated | truncated
            if done.any():
                envs.reset(options={"reset_mask": done})
        envs.close()
        per_step = (time.perf_counter() - begin) / count
        print(f"| {num_envs} | {per_step * 1000:.2f} | {per_step / num_envs * 1e6:.0f} |")
    print()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="paths,cache,bf16,env")
    sections = set(parser.parse_args().only.split(","))
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, load average {os.getloadavg()[0]:.1f}\n")
    for name, section in (
        ("paths", section_paths),
        ("cache", section_cache_slice),
        ("bf16", section_bf16),
        ("env", section_env),
    ):
        if name in sections:
            section()


if __name__ == "__main__":
    main()
