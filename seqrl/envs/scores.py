"""Reference scores and the normalized score.

normalized = 100 * (return - random_return) / (expert_return - random_return)

D4RL's published reference returns (d4rl/infos.py, `REF_MIN_SCORE` / `REF_MAX_SCORE`) are the
same for every dataset of one locomotion task, so they are keyed by task here. Minari datasets
carry their own `ref_min_score` / `ref_max_score` in their metadata; `ReferenceScores` holds either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReferenceScores:
    """The returns that map to normalized scores 0 (`min_score`) and 100 (`max_score`)."""

    min_score: float
    max_score: float
    source: str = ""

    def __post_init__(self) -> None:
        if not np.isfinite(self.min_score) or not np.isfinite(self.max_score):
            raise ValueError(
                f"reference scores must be finite, got {self.min_score}, {self.max_score}"
            )
        if self.max_score == self.min_score:
            raise ValueError(
                f"reference scores min_score == max_score == {self.min_score}: the normalized score "
                "would divide by zero; pass the random-policy and expert returns"
            )

    def normalize(self, returns: float | np.ndarray) -> float | np.ndarray:
        """Normalized score in 0-100 units (can be negative or above 100)."""
        return 100.0 * (np.asarray(returns) - self.min_score) / (self.max_score - self.min_score)


# D4RL: (random-policy return, expert return) per locomotion task.
D4RL_REFERENCE_SCORES: dict[str, ReferenceScores] = {
    "hopper": ReferenceScores(-20.272305, 3234.3, "d4rl"),
    "halfcheetah": ReferenceScores(-280.178953, 12135.0, "d4rl"),
    "walker2d": ReferenceScores(1.629008, 4592.3, "d4rl"),
    "ant": ReferenceScores(-325.6, 3879.7, "d4rl"),
}


def _task_key(name: str) -> str:
    """'Hopper-v5' -> 'hopper', 'halfcheetah-medium-v2' -> 'halfcheetah'.

    Namespaced ids ('mujoco/hopper/medium-v0', 'ALE/Pong-v5') get no key: a Minari dataset
    carries its own reference scores, which need not be D4RL's.
    """
    if "/" in name:
        return ""
    return re.split(r"[-_]", name.lower())[0]


def d4rl_reference_scores(name: str) -> ReferenceScores | None:
    """D4RL's reference scores for an env id or D4RL dataset name, or None if the task has none.

    Accepts Gymnasium ids (`Hopper-v5`) and D4RL names (`hopper-medium-v2`).
    """
    return D4RL_REFERENCE_SCORES.get(_task_key(name))


def normalized_score(
    returns: float | np.ndarray, reference: ReferenceScores | str
) -> float | np.ndarray:
    """Normalize `returns` with explicit reference scores or by D4RL task name."""
    if isinstance(reference, str):
        ref = d4rl_reference_scores(reference)
        if ref is None:
            known = ", ".join(sorted(D4RL_REFERENCE_SCORES))
            raise ValueError(
                f"no reference scores known for {reference!r} (D4RL tasks: {known}); pass "
                "ReferenceScores(min_score, max_score) or use a dataset that carries "
                "ref_min_score/ref_max_score in its metadata"
            )
        reference = ref
    return reference.normalize(returns)
