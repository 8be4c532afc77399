from __future__ import annotations

import numpy as np
import pytest

from seqrl.buffers import StoreMetadata
from seqrl.envs import (
    ReferenceScores,
    d4rl_reference_scores,
    normalized_score,
    parse_reference,
    reference_scores_for,
)

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


def test_only_d4rl_datasets_and_d4rl_env_versions_get_d4rl_scores_by_default():
    assert d4rl_reference_scores("Hopper-v3") == d4rl_reference_scores("hopper-medium-v2")
    assert d4rl_reference_scores("d4rl:walker2d-medium-v2").max_score == 4592.3
    assert d4rl_reference_scores("Hopper-v5") is None  # Gymnasium's v5 env is not D4RL's
    assert d4rl_reference_scores("Walker2d-v4") is None
    assert d4rl_reference_scores("Hopper-v5", any_version=True).max_score == 3234.3  # asked for
    assert d4rl_reference_scores("CartPole-v1", any_version=True) is None
    assert d4rl_reference_scores("mujoco/hopper/medium-v0") is None  # Minari carries its own


def test_reference_scores_for_a_dataset_follow_one_rule():
    own = StoreMetadata(dataset_id="seqrl-bench/hopper/medium-v0", ref_min_score=13.1,
                        ref_max_score=3269.5)  # fmt: skip
    assert reference_scores_for(own) == ReferenceScores(13.1, 3269.5, own.dataset_id)
    d4rl = StoreMetadata(dataset_id="hopper-medium-v2")
    assert reference_scores_for(d4rl).max_score == 3234.3
    assert reference_scores_for(StoreMetadata(dataset_id="me/hopper/mine-v0")) is None
    assert reference_scores_for(StoreMetadata(env_id="Hopper-v5", dataset_id="mine")) is None


def test_parse_reference_accepts_d4rl_none_and_min_max_with_clear_errors():
    assert parse_reference("none", "Hopper-v5") is None
    assert parse_reference("d4rl", "Hopper-v5").min_score == pytest.approx(-20.272305)
    assert parse_reference("1,11", "CartPole-v1").normalize(6.0) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="D4RL has no reference scores for CartPole-v1"):
        parse_reference("d4rl", "CartPole-v1")
    with pytest.raises(ValueError, match="expected d4rl, none or MIN,MAX"):
        parse_reference("high", "Hopper-v5")


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


def test_reference_scores_round_trip_through_the_run_config_form():
    ref = ReferenceScores(13.1, 3269.5, "dataset")
    assert ref.to_dict() == {"min_score": 13.1, "max_score": 3269.5}
    assert ReferenceScores(**ref.to_dict()).normalize(3269.5) == pytest.approx(100.0)
