"""Reference scores and the normalized score.

normalized = 100 * (return - random_return) / (expert_return - random_return)

D4RL's published reference returns (d4rl/infos.py, `REF_MIN_SCORE` / `REF_MAX_SCORE`) are the
same for every dataset of one locomotion task, so they are keyed by task here. Minari datasets
carry their own `ref_min_score` / `ref_max_score` in their metadata; `ReferenceScores` holds either.

One rule everywhere (`reference_scores_for`): a dataset's own reference returns when it has them;
D4RL's only for D4RL datasets (`hopper-medium-v2`, `d4rl:...`) and the env versions D4RL recorded
with (`Hopper-v2`, `Hopper-v3`), or when asked for explicitly (`seqrl eval --reference d4rl`).
Gymnasium's v4/v5 MuJoCo envs are not D4RL's envs, so their returns get no D4RL score by default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

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

    def to_dict(self) -> dict[str, float]:
        """The form a run's config.yaml stores (`reference:`); `ReferenceScores(**d)` reads it."""
        return {"min_score": self.min_score, "max_score": self.max_score}

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


D4RL_ENV_VERSIONS = ("v2", "v3")
"""The MuJoCo env versions D4RL's locomotion datasets were recorded with (gym's Hopper-v3)."""


def _task_key(name: str, any_version: bool = False) -> str:
    """'hopper-medium-v2' -> 'hopper', 'Hopper-v3' -> 'hopper', 'Hopper-v5' -> '' (not D4RL's env;
    'hopper' with `any_version`).

    Namespaced ids ('mujoco/hopper/medium-v0', 'ALE/Pong-v5') get no key: a Minari dataset
    carries its own reference scores, which need not be D4RL's.
    """
    name = name.removeprefix("d4rl:")
    if "/" in name:
        return ""
    parts = re.split(r"[-_]", name.lower())
    is_dataset = len(parts) >= 3 and parts[0] in D4RL_REFERENCE_SCORES  # task-kind-vN
    if is_dataset or any_version or parts[-1] in D4RL_ENV_VERSIONS:
        return parts[0]
    return ""


def d4rl_reference_scores(name: str, any_version: bool = False) -> ReferenceScores | None:
    """D4RL's reference scores for a D4RL dataset name (`hopper-medium-v2`) or one of the env
    versions D4RL recorded with (`Hopper-v3`); None otherwise. `any_version=True` also maps later
    versions of the task (`Hopper-v5`): what `--reference d4rl` asks for."""
    return D4RL_REFERENCE_SCORES.get(_task_key(name, any_version))


def reference_scores_for(metadata: Any) -> ReferenceScores | None:
    """The reference scores of a dataset (a `StoreMetadata`): its own, else D4RL's when it is a
    D4RL dataset, else None."""
    low, high = metadata.ref_min_score, metadata.ref_max_score
    if low is not None and high is not None:
        return ReferenceScores(float(low), float(high), metadata.dataset_id or "dataset")
    return d4rl_reference_scores(metadata.dataset_id) if metadata.dataset_id else None


def parse_reference(text: str, env_id: str) -> ReferenceScores | None:
    """`--reference` values: `d4rl` (D4RL's for the env's task, any version), `none`, or
    `MIN,MAX` (the returns of a random policy and of an expert)."""
    if text == "none":
        return None
    if text == "d4rl":
        found = d4rl_reference_scores(env_id, any_version=True)
        if found is None:
            known = ", ".join(sorted(D4RL_REFERENCE_SCORES))
            raise ValueError(
                f"--reference d4rl: D4RL has no reference scores for {env_id} ({known})"
            )
        return found
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(
            f"--reference {text!r}: expected d4rl, none or MIN,MAX (e.g. --reference 13.1,3269.5)"
        ) from None
    return ReferenceScores(low, high, "given")


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
