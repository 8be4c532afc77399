"""Batched evaluation: exactly `episodes` complete episodes spread over `num_envs` parallel envs.

Episode i always starts from `env.reset(seed=seed + i)`, whichever env slot runs it, so the
result equals running the same episodes one by one (for a deterministic policy), and no episode
is cut short or dropped: short episodes finishing first cannot bias the mean, because the set of
episodes is fixed before the first step. Env slots that run out of episodes idle (their steps
are discarded) until the last episode ends.

The policy sees only `reset(done)` and `act(obs, reward)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from seqrl.core import Policy
from seqrl.envs.factory import make_vector_env
from seqrl.envs.scores import ReferenceScores
from seqrl.envs.seeding import episode_seeds


@dataclass
class EvalResult:
    """Per-episode returns and lengths, in episode order (episode i used seed `seed + i`)."""

    returns: np.ndarray
    """(E,) undiscounted episode returns."""
    lengths: np.ndarray
    """(E,) episode lengths in steps."""
    seeds: list[int | None] = field(default_factory=list)
    reference: ReferenceScores | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    @property
    def normalized_scores(self) -> np.ndarray | None:
        """(E,) normalized scores (0-100 units), or None when no reference scores are known."""
        if self.reference is None:
            return None
        return np.asarray(self.reference.normalize(self.returns))

    @property
    def normalized_mean(self) -> float | None:
        scores = self.normalized_scores
        return None if scores is None else float(np.mean(scores))

    @property
    def normalized_std(self) -> float | None:
        scores = self.normalized_scores
        return None if scores is None else float(np.std(scores))

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Flat metrics for logging: `eval/return_mean`, `eval/normalized_score`, ..."""
        out = {
            f"{prefix}/return_mean": self.mean,
            f"{prefix}/return_std": self.std,
            f"{prefix}/length_mean": float(np.mean(self.lengths)),
            f"{prefix}/episodes": float(len(self.returns)),
        }
        if self.reference is not None:
            out[f"{prefix}/normalized_score"] = self.normalized_mean  # type: ignore[assignment]
            out[f"{prefix}/normalized_score_std"] = self.normalized_std  # type: ignore[assignment]
        return out

    def table(self) -> str:
        """A small Markdown table of the result."""
        rows = [
            ("episodes", f"{len(self.returns)}"),
            ("return", f"{self.mean:.1f} ± {self.std:.1f}"),
            ("length", f"{np.mean(self.lengths):.1f}"),
        ]
        if self.reference is not None:
            rows.append(
                ("normalized score", f"{self.normalized_mean:.1f} ± {self.normalized_std:.1f}")
            )
            rows.append(
                (
                    "reference (0 / 100)",
                    f"{self.reference.min_score:g} / {self.reference.max_score:g}",
                )
            )
        width = max(len(k) for k, _ in rows)
        lines = [f"| {'metric'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
        lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
        return "\n".join(lines)


def evaluate(
    policy: Policy,
    env_id: str,
    episodes: int = 10,
    num_envs: int = 10,
    seed: int | None = 0,
    reference: ReferenceScores | None = None,
    env_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
    asynchronous: bool = False,
) -> EvalResult:
    """Run exactly `episodes` episodes of `policy` on `env_id` over `num_envs` parallel envs.

    Args:
        policy: a batched `Policy` for `min(num_envs, episodes)` envs.
        seed: episode i is reset with seed `seed + i` (None: unseeded).
        reference: scores for normalization (None: no normalized score; see
            `seqrl.envs.scores.reference_scores_for` for the rule the run commands use).
        env_kwargs: passed to `gymnasium.make`.
        progress: show a progress bar over finished episodes.
        asynchronous: step the envs in subprocesses (Gymnasium's `AsyncVectorEnv`); same
            episodes and returns as in-process stepping, faster only where `env.step` costs more
            than sending observations between processes (see the README's rollout tables).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    num_envs = min(num_envs, episodes)
    seeds = episode_seeds(seed, episodes)
    envs = make_vector_env(
        env_id, num_envs, asynchronous=asynchronous, autoreset=False, **(env_kwargs or {})
    )
    returns = np.zeros(episodes, dtype=np.float64)
    lengths = np.zeros(episodes, dtype=np.int64)
    slot_episode = np.arange(num_envs)  # (N,) episode each env runs; -1 = idle
    slot_return = np.zeros(num_envs, dtype=np.float64)
    slot_length = np.zeros(num_envs, dtype=np.int64)
    next_episode, finished = num_envs, 0
    bar = tqdm(total=episodes, desc=f"eval {env_id}", unit="ep", disable=not progress)
    try:
        obs, _ = envs.reset(seed=seeds[:num_envs])
        policy.reset(None)
        reward = None
        with torch.inference_mode():
            while finished < episodes:
                action = policy.act(obs, reward).action.cpu().numpy()
                obs, reward, terminated, truncated, _ = envs.step(action)
                slot_return += reward
                slot_length += 1
                done = np.logical_or(terminated, truncated)
                if not done.any():
                    continue
                reset_seeds: list[int | None] = [None] * num_envs
                for i in np.flatnonzero(done):
                    if slot_episode[i] >= 0:
                        returns[slot_episode[i]] = slot_return[i]
                        lengths[slot_episode[i]] = slot_length[i]
                        finished += 1
                        bar.update(1)
                    if next_episode < episodes:
                        slot_episode[i] = next_episode
                        reset_seeds[i] = seeds[next_episode]
                        next_episode += 1
                    else:
                        slot_episode[i] = -1
                    slot_return[i] = 0.0
                    slot_length[i] = 0
                obs, _ = envs.reset(seed=reset_seeds, options={"reset_mask": done})
                policy.reset(done)
                reward = np.where(done, 0.0, reward)
    finally:
        bar.close()
        envs.close()
    return EvalResult(returns=returns, lengths=lengths, seeds=seeds, reference=reference)
