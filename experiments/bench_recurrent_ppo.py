"""seqrl's LSTM PPO against sb3-contrib's RecurrentPPO, matched settings, one run, same machine.

    .venv/bin/python experiments/bench_recurrent_ppo.py --env seqrl/MaskedCartPole-v1 \
        --steps 200000 --out experiments/recurrent_ppo/bench.png

Both agents get: the same env (16 synchronous copies), 128 steps per env per rollout, 4 epochs x
4 minibatches, Adam 3e-4 (eps 1e-5), gamma 0.99, GAE 0.95, clip 0.2, entropy 0.01, value 0.5,
grad clip 0.5, running observation normalization, and the same network: Linear(obs, 64) + tanh
-> one LSTM(64) shared by actor and critic -> linear heads. sb3-contrib has no truncated-BPTT
length (its sequences are the episode pieces inside a rollout), so seqrl's `chunk_len` is set to
the rollout length, which cuts the same pieces.

Differences that remain (documented, not hidden): with `shared_lstm=True` sb3-contrib detaches
the critic's LSTM features, so its value loss does not train the LSTM (seqrl's does);
sb3-contrib normalizes observations with `VecNormalize` (updated every step), seqrl after each
update. Timing is wall-clock of training only (collection + updates, 1 torch thread each), both
runs in this process one after the other; the final evaluation uses `seqrl.envs.evaluate`
(deterministic, the same 100 seeded episodes) for both.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from seqrl.agents.recurrent_ppo import RecurrentPPO, RecurrentPPOConfig
from seqrl.core import EnvSpec, PolicyStep, RolloutSettings
from seqrl.envs import evaluate, make_env, seed_everything
from seqrl.train.logging import read_metrics
from seqrl.train.online import OnlineConfig, train_online

NUM_ENVS, ROLLOUT, EPOCHS, MINIBATCHES, WIDTH = 16, 128, 4, 4, 64
PPO = {"lr": 3e-4, "gamma": 0.99, "gae_lambda": 0.95, "clip": 0.2, "ent_coef": 0.01,
       "vf_coef": 0.5, "max_grad_norm": 0.5}  # fmt: skip


def run_seqrl(env_id: str, steps: int, seed: int, run_dir: Path) -> tuple[float, list, object]:
    seed_everything(seed)
    probe = make_env(env_id)
    spec = EnvSpec.from_spaces(probe.observation_space, probe.action_space)
    probe.close()
    config = RecurrentPPOConfig(
        backbone="lstm", width=WIDTH, layers=1, chunk_len=ROLLOUT, epochs=EPOCHS,
        minibatches=MINIBATCHES, **PPO,
    )  # fmt: skip
    agent = RecurrentPPO(config, spec)
    loop = OnlineConfig(
        steps=steps, num_envs=NUM_ENVS, rollout_steps=ROLLOUT, eval_every=0,
        eval_episodes=1, eval_num_envs=1, checkpoint_every=0,
    )  # fmt: skip
    began = time.perf_counter()
    rollout = RolloutSettings(chunk_len=ROLLOUT)
    train_online(agent, env_id, run_dir, loop, rollout, seed=seed, progress=False)
    seconds = time.perf_counter() - began
    curve = [
        (r["step"], r["rollout/return_mean"])
        for r in read_metrics(run_dir)
        if "rollout/return_mean" in r
    ]
    return seconds, curve, agent.policy(num_envs=20)


class SB3Policy:
    """sb3-contrib's RecurrentPPO behind the seqrl Policy interface (for `evaluate`)."""

    def __init__(self, model, normalizer, num_envs: int) -> None:
        self.model, self.normalizer, self.num_envs = model, normalizer, num_envs
        self.reset()

    def reset(self, done=None) -> None:
        if done is None:
            self.state, self.starts = None, np.ones(self.num_envs, dtype=bool)
        else:
            self.starts = self.starts | np.asarray(done)

    def act(self, obs, reward=None) -> PolicyStep:
        obs = self.normalizer.normalize_obs(np.asarray(obs))
        action, self.state = self.model.predict(
            obs, state=self.state, episode_start=self.starts, deterministic=True
        )
        self.starts = np.zeros(self.num_envs, dtype=bool)
        return PolicyStep(torch.as_tensor(action))


def run_sb3(env_id: str, steps: int, seed: int) -> tuple[float, list, object]:
    import torch.nn as nn
    from sb3_contrib import RecurrentPPO as SB3RecurrentPPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor, VecNormalize

    import seqrl.envs.memory  # noqa: F401  (registers the seqrl ids)

    class LinearTanh(BaseFeaturesExtractor):
        """The same encoder as seqrl's: Linear(obs, WIDTH) + tanh."""

        def __init__(self, observation_space: gym.Space) -> None:
            super().__init__(observation_space, WIDTH)
            obs_dim = int(np.prod(observation_space.shape))
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(obs_dim, WIDTH), nn.Tanh())

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.net(obs)

    class Curve(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.points: list[tuple[int, float]] = []

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            infos = list(self.model.ep_info_buffer)[-NUM_ENVS * 4 :]
            if infos:
                self.points.append((self.num_timesteps, float(np.mean([i["r"] for i in infos]))))

    envs = DummyVecEnv([lambda: gym.make(env_id) for _ in range(NUM_ENVS)])
    envs = VecNormalize(VecMonitor(envs), norm_obs=True, norm_reward=False)
    model = SB3RecurrentPPO(
        "MlpLstmPolicy", envs, learning_rate=PPO["lr"], n_steps=ROLLOUT,
        batch_size=NUM_ENVS * ROLLOUT // MINIBATCHES, n_epochs=EPOCHS, gamma=PPO["gamma"],
        gae_lambda=PPO["gae_lambda"], clip_range=PPO["clip"], ent_coef=PPO["ent_coef"],
        vf_coef=PPO["vf_coef"], max_grad_norm=PPO["max_grad_norm"], seed=seed, device="cpu",
        policy_kwargs={
            "lstm_hidden_size": WIDTH, "n_lstm_layers": 1, "shared_lstm": True,
            "enable_critic_lstm": False, "net_arch": [], "features_extractor_class": LinearTanh,
        },
    )  # fmt: skip
    curve = Curve()
    began = time.perf_counter()
    model.learn(total_timesteps=steps, callback=curve)
    seconds = time.perf_counter() - began
    envs.training = False
    return seconds, curve.points, SB3Policy(model, envs, 20)


def curve_at(curve: list[tuple[int, float]], step: int) -> float:
    """The mean training return of the last logged point at or before `step` (nan if none)."""
    before = [value for at, value in curve if at <= step]
    return before[-1] if before else float("nan")


def plot(curves: dict[str, list], out: Path, env_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 3.6))
    for name, curve in curves.items():
        if curve:
            steps, values = zip(*curve)
            axis.plot(steps, values, label=name)
    axis.set(xlabel="environment steps", ylabel="training episode return", title=env_id)
    axis.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="seqrl/MaskedCartPole-v1")
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="experiments/recurrent_ppo/bench.png")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"env {args.env}, {args.steps} steps, {NUM_ENVS} envs x {ROLLOUT} steps, "
          f"LSTM({WIDTH}), {EPOCHS} epochs x {MINIBATCHES} minibatches, load {os.getloadavg()}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        seqrl_s, seqrl_curve, seqrl_policy = run_seqrl(args.env, args.steps, args.seed, Path(tmp))
    sb3_s, sb3_curve, sb3_policy = run_sb3(args.env, args.steps, args.seed)
    finals = {
        name: evaluate(policy, args.env, episodes=100, num_envs=20, seed=10_000)
        for name, policy in (("seqrl", seqrl_policy), ("sb3-contrib", sb3_policy))
    }
    rate = {"seqrl": args.steps / seqrl_s, "sb3-contrib": args.steps / sb3_s}
    print("\n| library | env steps/s | train time (s) | final eval return (100 ep) |")
    print("|---|---|---|---|")
    for name, seconds in (("seqrl", seqrl_s), ("sb3-contrib", sb3_s)):
        result = finals[name]
        print(
            f"| {name} | {rate[name]:.0f} | {seconds:.1f} | {result.mean:.1f} ± {result.std:.1f} |"
        )
    print(f"\nseqrl / sb3-contrib steps/s: {rate['seqrl'] / rate['sb3-contrib']:.2f}x")
    print("\n| env steps | seqrl return | sb3-contrib return |")
    print("|---|---|---|")
    for fraction in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        step = int(args.steps * fraction)
        print(f"| {step} | {curve_at(seqrl_curve, step):.1f} | {curve_at(sb3_curve, step):.1f} |")
    plot({"seqrl LSTM PPO": seqrl_curve, "sb3-contrib RecurrentPPO": sb3_curve},
         Path(args.out), args.env)  # fmt: skip
    print(f"\nplot: {args.out}   (load after: {os.getloadavg()})")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "steps_per_s": rate, "final_return": {k: v.mean for k, v in finals.items()},
            "curves": {"seqrl": seqrl_curve, "sb3-contrib": sb3_curve},
        }))  # fmt: skip


if __name__ == "__main__":
    main()
