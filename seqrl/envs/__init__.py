"""Gymnasium environments: the env factory, batched evaluation, reference scores, simple policies.

Importing this package registers seqrl's own env ids (`seqrl/TMaze-v0`, ... from
`seqrl.envs.memory`), so `gymnasium.make("seqrl/TMaze-v0")` works after `import seqrl.envs`.
"""

from seqrl.envs import memory  # noqa: F401  (registers the seqrl/... ids)
from seqrl.envs.evaluate import EvalResult, evaluate
from seqrl.envs.factory import check_env_id, final_observations, make_env, make_vector_env
from seqrl.envs.policies import CallablePolicy, RandomPolicy
from seqrl.envs.scores import (
    D4RL_REFERENCE_SCORES,
    ReferenceScores,
    d4rl_reference_scores,
    normalized_score,
    parse_reference,
    reference_scores_for,
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
    "parse_reference",
    "reference_scores_for",
    "seed_everything",
]
