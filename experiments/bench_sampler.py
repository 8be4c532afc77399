"""Window-batch throughput: seqrl's WindowSampler against the reference Decision Transformer.

    python experiments/bench_sampler.py                       # shared Hopper medium data
    python experiments/bench_sampler.py --dataset PATH_OR_ID --batch-size 64 --context-len 20

Measured in one process, on the same data, with the same batch shape, interleaved (A, B, C, A,
B, C, ...) so that load from other processes on a shared machine hits all samplers alike; the
table reports the median of the repeats. Three samplers:

- `reference get_batch`: written like `get_batch` in kzl/decision-transformer
  (`gym/experiment.py`): episodes drawn with probability proportional to length, a Python loop
  over the batch that slices each window, recomputes the episode's return-to-go from the start
  point with a Python `discount_cumsum` loop, pads on the left (actions with -10), normalizes
  states and converts to torch. This is the baseline the target (>= 10x) refers to.
- `reference + precomputed rtg`: the same loop with return-to-go computed once per episode
  beforehand, i.e. the obvious NumPy fix; a stronger baseline, reported for honesty.
- `seqrl WindowSampler`: uniform start over all steps, numba gather kernel, torch.from_numpy.
  It does not normalize observations (models do that); the reference does, which costs it a
  little (one vectorized op per window).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from seqrl.buffers import EpisodeStore, WindowSampler, load_dataset

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared/data/minari/seqrl-bench/hopper/medium-v0"
)
MAX_EP_LEN = 1000
RETURN_SCALE = 1000.0


def discount_cumsum(x: np.ndarray, gamma: float) -> np.ndarray:
    """The reference implementation's return-to-go: a Python loop from the end."""
    out = np.zeros_like(x)
    out[-1] = x[-1]
    for t in reversed(range(x.shape[0] - 1)):
        out[t] = x[t] + gamma * out[t + 1]
    return out


def make_reference_get_batch(
    store: EpisodeStore, batch_size: int, max_len: int, precompute_rtg: bool
) -> Callable[[], tuple[torch.Tensor, ...]]:
    """A `get_batch()` over `store`'s episodes, written like the reference DT's."""
    trajectories = []
    for e in range(store.num_episodes):
        ep = store.episode(e)
        traj = {
            "observations": ep.observations,
            "actions": ep.actions,
            "rewards": ep.rewards,
            "terminals": ep.terminations,
        }
        if precompute_rtg:
            traj["rtg"] = discount_cumsum(ep.rewards.astype(np.float64), 1.0)
        trajectories.append(traj)
    state_dim, act_dim = store.observation_shape[0], store.action_shape[0]
    states = np.concatenate([t["observations"] for t in trajectories], axis=0)
    state_mean, state_std = np.mean(states, axis=0), np.std(states, axis=0) + 1e-6
    traj_lens = np.array([len(t["rewards"]) for t in trajectories])
    sorted_inds = np.argsort(store.episode_returns)  # pct_traj = 1: every trajectory
    p_sample = traj_lens[sorted_inds] / sum(traj_lens[sorted_inds])
    num_trajectories = len(trajectories)

    def get_batch() -> tuple[torch.Tensor, ...]:
        batch_inds = np.random.choice(
            np.arange(num_trajectories), size=batch_size, replace=True, p=p_sample
        )
        s, a, r, d, rtg, timesteps, mask = [], [], [], [], [], [], []
        for i in range(batch_size):
            traj = trajectories[int(sorted_inds[batch_inds[i]])]
            si = random.randint(0, traj["rewards"].shape[0] - 1)
            s.append(traj["observations"][si : si + max_len].reshape(1, -1, state_dim))
            a.append(traj["actions"][si : si + max_len].reshape(1, -1, act_dim))
            r.append(traj["rewards"][si : si + max_len].reshape(1, -1, 1))
            d.append(traj["terminals"][si : si + max_len].reshape(1, -1))
            timesteps.append(np.arange(si, si + s[-1].shape[1]).reshape(1, -1))
            timesteps[-1][timesteps[-1] >= MAX_EP_LEN] = MAX_EP_LEN - 1
            if precompute_rtg:
                rtg_window = traj["rtg"][si : si + s[-1].shape[1] + 1]
            else:
                rtg_window = discount_cumsum(traj["rewards"][si:], gamma=1.0)[: s[-1].shape[1] + 1]
            rtg.append(rtg_window.reshape(1, -1, 1))
            if rtg[-1].shape[1] <= s[-1].shape[1]:
                rtg[-1] = np.concatenate([rtg[-1], np.zeros((1, 1, 1))], axis=1)
            tlen = s[-1].shape[1]
            s[-1] = np.concatenate([np.zeros((1, max_len - tlen, state_dim)), s[-1]], axis=1)
            s[-1] = (s[-1] - state_mean) / state_std
            a[-1] = np.concatenate([np.ones((1, max_len - tlen, act_dim)) * -10.0, a[-1]], axis=1)
            r[-1] = np.concatenate([np.zeros((1, max_len - tlen, 1)), r[-1]], axis=1)
            d[-1] = np.concatenate([np.ones((1, max_len - tlen)) * 2, d[-1]], axis=1)
            rtg[-1] = (
                np.concatenate([np.zeros((1, max_len - tlen, 1)), rtg[-1]], axis=1) / RETURN_SCALE
            )
            timesteps[-1] = np.concatenate([np.zeros((1, max_len - tlen)), timesteps[-1]], axis=1)
            mask.append(np.concatenate([np.zeros((1, max_len - tlen)), np.ones((1, tlen))], axis=1))
        return (
            torch.from_numpy(np.concatenate(s, axis=0)).to(dtype=torch.float32),
            torch.from_numpy(np.concatenate(a, axis=0)).to(dtype=torch.float32),
            torch.from_numpy(np.concatenate(r, axis=0)).to(dtype=torch.float32),
            torch.from_numpy(np.concatenate(d, axis=0)).to(dtype=torch.long),
            torch.from_numpy(np.concatenate(rtg, axis=0)).to(dtype=torch.float32),
            torch.from_numpy(np.concatenate(timesteps, axis=0)).to(dtype=torch.long),
            torch.from_numpy(np.concatenate(mask, axis=0)),
        )

    return get_batch


def batches_per_second(fn: Callable[[], object], seconds: float) -> float:
    """Call `fn` for about `seconds` and return calls per second."""
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        calls += 1
    return calls / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(DEFAULT_DATA),
                        help="Minari id or folder, or D4RL .hdf5 file")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--context-len", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    args = parser.parse_args()

    torch.set_num_threads(1)
    random.seed(0)
    np.random.seed(0)
    store = load_dataset(args.dataset)
    batch, k = args.batch_size, args.context_len
    sampler = WindowSampler(store, k, batch, seed=0, return_scale=RETURN_SCALE,
                            max_timestep=MAX_EP_LEN - 1)  # fmt: skip
    samplers = {
        "reference get_batch": make_reference_get_batch(store, batch, k, precompute_rtg=False),
        "reference + precomputed rtg": make_reference_get_batch(store, batch, k, True),
        "seqrl WindowSampler": sampler.sample,
    }
    for fn in samplers.values():  # warm up (numba compiles or loads its cache here)
        fn()
    rates: dict[str, list[float]] = {name: [] for name in samplers}
    for _ in range(args.repeats):
        for name, fn in samplers.items():
            rates[name].append(batches_per_second(fn, args.seconds))

    print(f"data: {store.metadata.dataset_id} ({store.num_episodes} episodes, {store.num_steps} "
          f"steps) from {store.metadata.source}")  # fmt: skip
    print(f"batch B={batch}, K={k}; median of {args.repeats} x {args.seconds:.1f} s; torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s)\n")  # fmt: skip
    baseline = statistics.median(rates["reference get_batch"])
    header = f"{'sampler':<30} {'batches/s':>10} {'windows/s':>11} {'us/batch':>9} {'speedup':>8}"
    print(header)
    print("-" * len(header))
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:<30} {rate:>10.0f} {rate * batch:>11.0f} {1e6 / rate:>9.1f} "
              f"{rate / baseline:>7.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
