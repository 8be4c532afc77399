"""Gymnasium environments: the env factory, batched evaluation, reference scores, simple policies."""

from seqrl.envs.evaluate import EvalResult, evaluate
from seqrl.envs.factory import check_env_id, final_observations, make_env, make_vector_env
from seqrl.envs.policies import CallablePolicy, RandomPolicy
from seqrl.envs.scores import (
    D4RL_REFERENCE_SCORES,
    ReferenceScores,
    d4rl_reference_scores,
    normalized_score,
)
from seqrl.envs.seeding import episode_seeds, seed_everything

__all__ = [
    "D4RL_REFERENCE_SCORES",
    "CallablePolicy",
    "EvalResult",
    "RandomPolicy",
    "ReferenceScores",
    "check_env_id",
    "d4rl_reference_scores",
    "episode_seeds",
    "evaluate",
    "final_observations",
    "make_env",
    "make_vector_env",
    "normalized_score",
    "seed_everything",
]
