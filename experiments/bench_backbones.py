"""Per-step inference latency of every backbone at episode positions t, at B=1 and B=64.

What a rollout pays per environment step: `backbone.step(x_new, state)` with a KV cache or a
recurrent state at episode position t, next to the reference Decision Transformer evaluation,
which recomputes the GPT over the last K tokens from scratch at every step (a K-token window,
padded to K early in the episode, costs the same at every t).

Expected shape of the result: the ring-buffered GPT cache costs O(window) per step and stays
flat in t; LSTM / GRU / xLSTM stay flat in t; recomputing the window is several times slower
than the cache at B=64. The full-causal GPT cache has a fixed shape (B, H, max_len, Dh) but
attends over its filled prefix only, so its step grows with t (O(t), as flash-attn's kernel on a
GPU); GTrXL keeps its memory's keys and values, so a step projects only the new token.

    OMP_NUM_THREADS=1 python experiments/bench_backbones.py --threads 1

Prints a Markdown table of milliseconds per step (median over --repeats steps).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from seqrl.nn import make_backbone


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--width", type=int, default=128, help="D, the same for every backbone")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--window", type=int, default=20, help="K: GPT window, GTrXL memory")
    parser.add_argument("--positions", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per cell")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per cell")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def rows(args: argparse.Namespace) -> list[tuple[str, str, dict, str]]:
    """(label, backbone name, options, mode) for every row of the table."""
    k = args.window
    longest = max(args.positions) + args.warmup + args.repeats + 1
    return [
        (f"gpt, window {k}, ring cache", "gpt", {"window": k}, "cache"),
        (f"gpt, full causal, cache of {longest}", "gpt", {"max_len": longest}, "cache"),
        (f"gpt, recompute last {k} (DT reference)", "gpt", {"max_len": k}, "recompute"),
        (f"gtrxl, memory {k}", "gtrxl", {"window": k}, "cache"),
        ("lstm", "lstm", {}, "cache"),
        ("gru", "gru", {}, "cache"),
        ("xlstm (mLSTM, sLSTM, mLSTM)", "xlstm", {"slstm_at": (1,)}, "cache"),
    ]


@torch.inference_mode()
def advance(model: torch.nn.Module, batch: int, tokens: int, width: int, chunk: int = 100) -> dict:
    """The state after `tokens` random tokens, built with chunked parallel forwards."""
    state = model.initial_state(batch, "cpu")
    for begin in range(0, tokens, chunk):
        x = torch.randn(batch, min(chunk, tokens - begin), width)
        _, state = model(x, state)
    return state


def median_seconds(step: Callable[[], None], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        step()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


@torch.inference_mode()
def measure(
    model: torch.nn.Module, mode: str, batch: int, position: int, args: argparse.Namespace
) -> float:
    width = args.width
    if mode == "recompute":
        window = torch.randn(batch, args.window, width)  # (B, K, D), the last K tokens

        def step() -> None:
            model(window, return_state=False)

    else:
        state = advance(model, batch, position, width)
        token = torch.randn(batch, 1, width)  # (B, 1, D)

        def step() -> None:
            nonlocal state
            _, state = model.step(token, state)

    return median_seconds(step, args.warmup, args.repeats)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    columns = [(b, t) for b in args.batch_sizes for t in args.positions]
    header = " | ".join(f"B={b}, t={t}" for b, t in columns)
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
        f"D={args.width}, layers={args.layers}, heads={args.heads}; ms per step (median of {args.repeats})\n"
    )
    print(f"| backbone | {header} |")
    print("|---|" + "---:|" * len(columns))
    results: dict[str, dict[tuple[int, int], float]] = {}
    for label, name, options, mode in rows(args):
        model = make_backbone(name, args.width, args.layers, heads=args.heads, **options).eval()
        results[label] = {(b, t): measure(model, mode, b, t, args) for b, t in columns}
        cells = " | ".join(f"{1e3 * results[label][c]:.3f}" for c in columns)
        print(f"| {label} | {cells} |", flush=True)
    ring, recompute = (results[label] for label, *_ in rows(args)[:3:2])
    ratios = ", ".join(f"B={b}, t={t}: {recompute[(b, t)] / ring[(b, t)]:.1f}x" for b, t in columns)
    print(f"\nrecompute / ring cache: {ratios}")


if __name__ == "__main__":
    main()
