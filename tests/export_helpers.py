"""Small trained runs of every registered agent, and the episode driver the export tests share.

`make_run(name, ...)` trains a run of any registry entry without knowing the algorithm: the
entry's `tiny_config` as agent settings, its loop deciding between a dataset (offline) and an env
(online). `compare_rollouts` plays full episodes in 4 envs whose episodes end at different steps
(so resets happen in the middle of a batch), acting with the in-process `load_policy` policy, and
feeds the same observations and rewards to an exported policy, and, where `policy.json` declares a
`noise` input (diffusion), the same noise to both (`act(obs, reward, noise=...)`).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from seqrl.agents import REGISTRY
from seqrl.buffers import EpisodeStore, StoreMetadata, save_dataset
from seqrl.core import Loop
from seqrl.export import load_policy
from seqrl.train.runs import resolve_config, train_run
from tests.buffers.helpers import random_episodes

ENVS = {"continuous": "Pendulum-v1", "discrete": "CartPole-v1"}
NUM_ENVS = 4
EPISODE_ENDS = (37, 50, 61, 80)
"""Env i's episodes are truncated after EPISODE_ENDS[i] steps (CartPole may end sooner)."""
EXPORT_OPTIONS: dict[str, dict[str, Any]] = {
    "diffusion": {"scheduler": "ddim", "inference_steps": 3},
}
"""Policy options without which an agent's default policy cannot be exported (diffusion's
default DDPM sampler draws noise at every denoising step; export unrolls DDIM)."""


def make_dataset(folder: Path, kind: str) -> Path:
    """A random dataset (shapes matter, not quality) for the env of `kind`."""
    rng = np.random.default_rng(0)
    if kind == "continuous":
        episodes = random_episodes(rng, [15, 9, 12, 20], obs_shape=(3,), act_dim=1)
        for episode in episodes:
            episode["actions"] *= 2.0  # Pendulum's Box(-2, 2)
    else:
        episodes = random_episodes(
            rng, [15, 9, 12, 20], obs_shape=(4,), act_dim=None, num_actions=2
        )
    path = folder / f"{kind}.hdf5"
    meta = StoreMetadata(env_id=ENVS[kind], dataset_id=f"tiny-{kind}")
    save_dataset(EpisodeStore.from_episodes(episodes, meta), path)
    return path


def make_run(
    name: str, folder: Path, kind: str = "continuous", agent: dict[str, Any] | None = None
) -> Path:
    """A few updates of registry entry `name` (its tiny config, then `agent` overrides)."""
    entry = REGISTRY[name]
    settings = {**entry.tiny_config, **(agent or {})}
    if "precision" in {f.name for f in fields(entry.config_cls)}:
        settings.setdefault("precision", "fp32")  # exports are fp32; "auto" may pick bf16 here
    overrides = [f"agent.{key}={value}" for key, value in settings.items()]
    overrides += ["train.eval_every=0", "train.eval_episodes=1", "train.eval_num_envs=1"]
    run_dir = folder / f"{name}-{kind}"
    if entry.loop is Loop.OFFLINE:
        overrides += ["train.steps=4", "train.checkpoint_every=4"]
        config = resolve_config(name, str(make_dataset(folder, kind)), None, overrides)
    else:
        overrides += ["train.steps=64", "train.num_envs=2", "train.rollout_steps=32"]
        overrides += ["train.checkpoint_every=64"]
        config = resolve_config(name, None, None, overrides, env_id=ENVS[kind])
    train_run(run_dir, config, progress=False)
    return run_dir


def compare_rollouts(
    run_dir: Path, exported: Any, kind: str, steps: int = 160, **options: Any
) -> tuple[float, int]:
    """Play `steps` steps in 4 envs with `load_policy`'s batched policy and feed the same
    observations to `exported` (an `ExportedPolicy` over 4 envs); returns (largest action
    difference, number of episode resets in the middle of the batch)."""
    reference = load_policy(run_dir, num_envs=NUM_ENVS, **options)
    envs = [gym.make(ENVS[kind], max_episode_steps=end) for end in EPISODE_ENDS]
    obs = np.stack([env.reset(seed=i)[0] for i, env in enumerate(envs)]).astype(np.float32)
    reference.reset(None)
    exported.reset(None)
    reward = np.zeros(NUM_ENVS, dtype=np.float32)
    noise_spec, rng = exported.meta["noise"], np.random.default_rng(7)
    worst, resets, episodes = 0.0, 0, NUM_ENVS
    for _ in range(steps):
        if noise_spec is None:
            expected = reference.act(obs, reward).action.cpu().numpy()
            got = exported.act(obs, reward)
        else:  # the same noise to both: the export is deterministic given it
            shape = (NUM_ENVS, *noise_spec["shape"][1:])
            noise = rng.standard_normal(shape).astype(np.float32)
            expected = reference.act(obs, reward, noise=noise).action.cpu().numpy()
            got = exported.act(obs, reward, noise)
        assert got.shape == expected.shape and got.dtype == expected.dtype, (got, expected)
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - expected))))
        done = np.zeros(NUM_ENVS, dtype=bool)
        for i, env in enumerate(envs):
            obs_i, reward[i], terminated, truncated, _ = env.step(expected[i])
            if terminated or truncated:
                obs_i, _ = env.reset(seed=episodes)
                episodes, done[i], reward[i] = episodes + 1, True, 0.0
            obs[i] = obs_i
        if done.any():
            resets += int(not done.all())
            reference.reset(done)
            exported.reset(done)
    return worst, resets
