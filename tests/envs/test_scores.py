from __future__ import annotations

import numpy as np
import pytest

from seqrl.envs import ReferenceScores, d4rl_reference_scores, normalized_score

# D4RL's published reference returns, d4rl/infos.py (REF_MIN_SCORE / REF_MAX_SCORE)
PUBLISHED = {
    "hopper-medium-v2": (-20.272305, 3234.3),
    "halfcheetah-medium-replay-v2": (-280.178953, 12135.0),
    "walker2d-medium-expert-v2": (1.629008, 4592.3),
    "ant-expert-v2": (-325.6, 3879.7),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_normalized_score_matches_d4rl_reference_values(name):
    low, high = PUBLISHED[name]
    assert normalized_score(low, name) == pytest.approx(0.0)
    assert normalized_score(high, name) == pytest.approx(100.0)
    assert normalized_score((low + high) / 2, name) == pytest.approx(50.0)
    assert normalized_score(1000.0, name) == pytest.approx(100 * (1000.0 - low) / (high - low))


def test_gymnasium_ids_map_to_d4rl_tasks():
    assert d4rl_reference_scores("Hopper-v5") == d4rl_reference_scores("hopper-medium-v2")
    assert d4rl_reference_scores("Walker2d-v4").max_score == 4592.3
    assert d4rl_reference_scores("CartPole-v1") is None
    assert d4rl_reference_scores("mujoco/hopper/medium-v0") is None  # Minari carries its own


def test_minari_style_reference_scores_normalize_arrays():
    ref = ReferenceScores(13.1013, 3269.5219)
    scores = ref.normalize(np.array([13.1013, 947.9, 3269.5219]))
    np.testing.assert_allclose(
        scores, [0.0, 100 * (947.9 - 13.1013) / (3269.5219 - 13.1013), 100.0]
    )


def test_unknown_task_and_degenerate_scores_are_rejected():
    with pytest.raises(ValueError, match="no reference scores known for 'CartPole-v1'"):
        normalized_score(1.0, "CartPole-v1")
    with pytest.raises(ValueError, match="divide by zero"):
        ReferenceScores(1.0, 1.0)
