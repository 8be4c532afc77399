"""Data-parallel throughput on CPU: 2 gloo processes against 1 process, same global batch.

    .venv/bin/python experiments/bench_ddp.py [--updates 40] [--global-batch 64]

DT at the reference size (width 128, 3 layers, 1 head, K=20, fp32) on the embedded Hopper demo
data. Every configuration trains with the same global batch per update:

    1 process,  1 thread,  batch 64
    1 process,  2 threads, batch 64        (the same cores as 2 processes)
    2 processes, 1 thread each, batch 32 per rank, gradients averaged by gloo all-reduce
      (seqrl.train.distributed: what `torchrun --nproc_per_node 2 -m seqrl train` runs)

and the table gives updates/s, samples/s and the ratio of 2 processes against each 1-process
configuration. Sampling is included (each rank samples its own windows), logging and checkpoints
are not. The first updates (warm-up) are not timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from seqrl.agents import DTAgent, DTConfig
from seqrl.agents.dt import make_sampler
from seqrl.buffers import load_dataset
from seqrl.envs import seed_everything
from seqrl.nn.optim import synchronized_gradients
from seqrl.train.distributed import (
    SINGLE,
    GradientAllReduce,
    World,
    distributed_world,
    local_torchrun_env,
)
from seqrl.train.runs import spec_for

DATA = Path(__file__).resolve().parents[1] / "seqrl" / "data" / "hopper-medium-demo.hdf5"
CONFIG = DTConfig(precision="fp32", warmup_steps=1)


def measure(world: World, batch: int, updates: int, warmup: int) -> float:
    """Updates per second of this rank (all ranks step together)."""
    store = load_dataset(str(DATA))
    config = dataclasses.replace(CONFIG, batch_size=batch)
    seed_everything(0)
    agent = DTAgent(config, spec_for(store, None), store.stats())
    seed_everything(world.rank_seed(0))
    sampler = make_sampler(config, store, world.rank_seed(0))
    sync = synchronized_gradients(GradientAllReduce(world)) if world.distributed else None
    if sync is not None:
        sync.__enter__()
    try:
        for _ in range(warmup):
            agent.update(sampler.sample())
        if world.distributed:
            torch.distributed.barrier()
        start = time.perf_counter()
        for _ in range(updates):
            agent.update(sampler.sample())
        if world.distributed:
            torch.distributed.barrier()
        return updates / (time.perf_counter() - start)
    finally:
        if sync is not None:
            sync.__exit__(None, None, None)


def _rank(rank: int, port: int, batch: int, updates: int, warmup: int, out: str) -> None:
    os.environ.update(local_torchrun_env(rank, 2, port))
    torch.set_num_threads(1)
    with distributed_world("gloo") as world:
        rate = measure(world, batch, updates, warmup)
    if rank == 0:
        Path(out).write_text(str(rate))


def two_processes(batch: int, updates: int, warmup: int) -> float:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "rate")
        mp.spawn(_rank, args=(port, batch, updates, warmup, out), nprocs=2, join=True)
        return float(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--global-batch", type=int, default=64)
    args = parser.parse_args()
    batch = args.global_batch
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rate = measure(SINGLE, batch, args.updates, args.warmup)
        rows.append((f"1 process, {threads} thread(s)", batch, rate))
    rate = two_processes(batch // 2, args.updates, args.warmup)
    rows.append(("2 processes (gloo), 1 thread each", batch // 2, rate))
    print(
        f"DT width {CONFIG.width}, {CONFIG.layers} layers, K={CONFIG.context_len}, fp32; "
        f"global batch {batch}; {args.updates} timed updates; {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}\n"
    )
    print("| configuration | batch per process | updates/s | samples/s | 2 procs vs this |")
    print("|---|---:|---:|---:|---:|")
    two = rows[-1][2]
    for name, per_process, rate in rows:
        print(f"| {name} | {per_process} | {rate:.2f} | {rate * batch:.0f} | {two / rate:.2f}x |")


if __name__ == "__main__":
    main()
