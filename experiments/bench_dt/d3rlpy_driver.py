"""d3rlpy's Decision Transformer, driven over a pipe by `experiments/bench_dt.py`.

Runs inside d3rlpy's own virtual environment (d3rlpy pins an older Gymnasium, so it must not share
seqrl's) and imports nothing from seqrl. It reads one JSON command per line on stdin and answers
with one JSON line on stdout; everything d3rlpy itself prints goes to stderr.

Commands:
  {"cmd": "init", "dataset": PATH.hdf5, "seed": S, "threads": T, ...DT settings...}
      build an MDPDataset from the D4RL-layout file and d3rlpy's DT the way d3rlpy's own
      reproduction script does (GPTAdamW with weight decay, linear warm-up, grad clipping,
      standardized observations, rewards x 1/return_scale, SIMPLE timestep encoding).
  {"cmd": "train", "steps": N}
      N steps of what `DecisionTransformer.fit` does per step: `sample_trajectory_batch`, then
      `update`. Answers the wall time of the N steps (timed here, so IPC is excluded) and the
      mean loss.
  {"cmd": "profile", "steps": N, "top": M}
      the same N steps under torch.profiler: the M ops with the most self CPU time, per step.
  {"cmd": "policy", "num_envs": N, "target_return": R}
      N `StatefulTransformerWrapper`s (d3rlpy's documented evaluation path), one per env slot.
  {"cmd": "reset", "done": [bool] * N | null}      reset the wrappers of the done slots (all: null)
  {"cmd": "act", "obs": [[float]] (N, obs_dim), "reward": [float] * N | null}
      one action per slot: `wrapper.predict(obs_i, reward_i)`, reward 0.0 right after a reset
      (as `d3rlpy.metrics.evaluate_transformer_with_environment` does).
  {"cmd": "quit"}
"""

from __future__ import annotations

import json
import os
import sys
import time


def _protocol_stream():
    """Keep the real stdout for answers; send every other print (d3rlpy logs, tqdm) to stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


class Driver:
    def __init__(self) -> None:
        self.algo = None
        self.dataset = None
        self.config: dict = {}
        self.wrappers: list = []
        self.fresh: list[bool] = []

    # ---- commands --------------------------------------------------------------------------
    def init(self, msg: dict) -> dict:
        threads = int(msg.get("threads", 1))
        import numpy as np
        import torch

        torch.set_num_threads(threads)
        import d3rlpy
        import h5py

        self.config = msg
        d3rlpy.seed(int(msg["seed"]))
        with h5py.File(msg["dataset"], "r") as f:
            data = {k: f[k][()] for k in ("observations", "actions", "rewards", "terminals")}
            data["timeouts"] = f["timeouts"][()] if "timeouts" in f else None
        dataset = d3rlpy.dataset.MDPDataset(
            observations=data["observations"].astype(np.float32),
            actions=data["actions"].astype(np.float32),
            rewards=data["rewards"].astype(np.float32),
            terminals=data["terminals"].astype(np.float32),
            timeouts=None if data["timeouts"] is None else data["timeouts"].astype(np.float32),
        )
        optim = d3rlpy.optimizers.GPTAdamWFactory(
            weight_decay=float(msg["weight_decay"]),
            clip_grad_norm=float(msg["grad_clip"]),
            lr_scheduler_factory=d3rlpy.optimizers.WarmupSchedulerFactory(
                warmup_steps=max(int(msg["warmup_steps"]), 1)
            ),
        )
        dropout = float(msg["dropout"])
        algo = d3rlpy.algos.DecisionTransformerConfig(
            batch_size=int(msg["batch_size"]),
            learning_rate=float(msg["lr"]),
            optim_factory=optim,
            encoder_factory=d3rlpy.models.VectorEncoderFactory(
                [int(msg["width"])], exclude_last_activation=True
            ),
            observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
            reward_scaler=d3rlpy.preprocessing.MultiplyRewardScaler(1.0 / msg["return_scale"]),
            context_size=int(msg["context_len"]),
            num_heads=int(msg["heads"]),
            num_layers=int(msg["layers"]),
            attn_dropout=dropout,
            resid_dropout=dropout,
            embed_dropout=dropout,
            activation_type=str(msg["activation"]),
            position_encoding_type=d3rlpy.PositionEncodingType.SIMPLE,
            max_timestep=int(msg["max_timestep"]),
        ).create(device="cpu:0")
        # what `fit` does before its first step: fit the scalers, build the networks
        from d3rlpy.algos.utility import build_scalers_with_trajectory_slicer

        build_scalers_with_trajectory_slicer(algo, dataset)
        obs_shape = dataset.sample_transition().observation_signature.shape[0]
        algo.create_impl(obs_shape, dataset.dataset_info.action_size)
        self.algo, self.dataset = algo, dataset
        params = sum(p.numel() for p in algo.impl.modules.transformer.parameters())
        return {
            "ok": True,
            "d3rlpy": d3rlpy.__version__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "episodes": len(dataset.episodes),
            "parameters": int(params),
        }

    def train(self, msg: dict) -> dict:
        steps = int(msg["steps"])
        batch_size, context = self.algo.config.batch_size, self.algo.config.context_size
        losses = []
        begin = time.perf_counter()
        for _ in range(steps):
            batch = self.dataset.sample_trajectory_batch(batch_size, length=context)
            losses.append(self.algo.update(batch)["loss"])
        seconds = time.perf_counter() - begin
        return {"seconds": seconds, "loss": float(sum(losses) / max(len(losses), 1))}

    def profile(self, msg: dict) -> dict:
        """torch.profiler over N training steps: the ops with the most self CPU time."""
        from torch.profiler import ProfilerActivity, profile

        steps = int(msg["steps"])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            self.train({"steps": steps})
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        return {
            "ops": [
                [e.key, e.self_cpu_time_total / 1000.0 / steps, e.count / steps]
                for e in rows[: int(msg.get("top", 40))]
            ],
            "total_ms": sum(e.self_cpu_time_total for e in rows) / 1000.0 / steps,
        }

    def policy(self, msg: dict) -> dict:
        target = float(msg["target_return"])
        self.wrappers = [
            self.algo.as_stateful_wrapper(target_return=target) for _ in range(int(msg["num_envs"]))
        ]
        self.fresh = [True] * len(self.wrappers)
        return {"ok": True}

    def reset(self, msg: dict) -> dict:
        done = msg.get("done")
        for i, wrapper in enumerate(self.wrappers):
            if done is None or done[i]:
                wrapper.reset()
                self.fresh[i] = True
        return {"ok": True}

    def act(self, msg: dict) -> dict:
        import numpy as np

        obs = np.asarray(msg["obs"], dtype=np.float32)
        reward = msg.get("reward")
        actions = []
        for i, wrapper in enumerate(self.wrappers):
            last = 0.0 if (reward is None or self.fresh[i]) else float(reward[i])
            actions.append(np.asarray(wrapper.predict(obs[i], last), dtype=np.float64).tolist())
            self.fresh[i] = False
        return {"action": actions}


def main() -> None:
    out = _protocol_stream()
    driver = Driver()
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        cmd = msg.get("cmd")
        if cmd == "quit":
            out.write(json.dumps({"ok": True}) + "\n")
            break
        try:
            if cmd not in ("init", "train", "profile", "policy", "reset", "act"):
                raise ValueError(f"unknown command {cmd!r}")
            answer = getattr(driver, cmd)(msg)
        except Exception as error:  # report to the parent instead of dying silently
            import traceback

            traceback.print_exc()
            answer = {"error": f"{type(error).__name__}: {error}"}
        out.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
