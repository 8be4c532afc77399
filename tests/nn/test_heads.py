"""ActionScaling: env units <-> model units, clipping only on bounded dims, any leading shape."""

from __future__ import annotations

import math

import pytest
import torch

from seqrl.nn.heads import ActionScaling

INF = math.inf


def test_bounded_box_maps_onto_minus_one_one() -> None:
    scaling = ActionScaling(2, low=(-2.0, 0.0), high=(2.0, 10.0))
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 10.0])
    torch.testing.assert_close(scaling.to_model(low), torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(scaling.to_model(high), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(scaling.to_model(torch.tensor([1.0, 7.5])), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(scaling.center, torch.tensor([0.0, 5.0]))
    torch.testing.assert_close(scaling.half_range, torch.tensor([2.0, 5.0]))
    assert scaling.center.dtype == scaling.half_range.dtype == torch.float32
    assert scaling.bounded.tolist() == [True, True]


def test_round_trip_is_the_identity_without_clipping() -> None:
    scaling = ActionScaling(3, low=(-1.0, -3.0, None), high=(5.0, -1.0, None))
    env = torch.randn(7, 3, generator=torch.Generator().manual_seed(0)) * 10  # outside the box too
    torch.testing.assert_close(scaling.to_env(scaling.to_model(env)), env)
    model = torch.randn(7, 3, generator=torch.Generator().manual_seed(1)) * 3
    torch.testing.assert_close(scaling.to_model(scaling.to_env(model)), model)


def test_clip_clamps_only_bounded_dims() -> None:
    scaling = ActionScaling(3, low=(0.0, None, -1.0), high=(4.0, None, INF))
    model = torch.tensor([[3.0, 3.0, 3.0], [-3.0, -3.0, -3.0]])
    clipped = scaling.to_env(model, clip=True)
    torch.testing.assert_close(clipped, torch.tensor([[4.0, 3.0, 3.0], [0.0, -3.0, -3.0]]))
    # Without clip the bounded dim leaves the box.
    torch.testing.assert_close(scaling.to_env(model)[:, 0], torch.tensor([8.0, -4.0]))


def test_clip_keeps_actions_already_inside_the_box() -> None:
    scaling = ActionScaling(2, low=(-2.0, 1.0), high=(2.0, 3.0))
    model = torch.tensor([[0.25, -0.5]])
    torch.testing.assert_close(scaling.to_env(model, clip=True), scaling.to_env(model))


def test_none_bounds_leave_every_dim_in_env_units() -> None:
    scaling = ActionScaling(2)  # low = high = None
    actions = torch.tensor([[12.0, -40.0]])
    assert scaling.bounded.tolist() == [False, False]
    torch.testing.assert_close(scaling.to_model(actions), actions)
    torch.testing.assert_close(scaling.to_env(actions, clip=True), actions)


def test_infinite_or_half_open_bounds_make_a_dim_unbounded() -> None:
    scaling = ActionScaling(4, low=(-INF, 0.0, -1.0, None), high=(INF, INF, 1.0, 2.0))
    assert scaling.bounded.tolist() == [False, False, True, False]
    torch.testing.assert_close(scaling.center, torch.tensor([0.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(scaling.half_range, torch.tensor([1.0, 1.0, 1.0, 1.0]))
    actions = torch.tensor([5.0, 5.0, 5.0, 5.0])
    torch.testing.assert_close(
        scaling.to_env(actions, clip=True), torch.tensor([5.0, 5.0, 1.0, 5.0])
    )
    assert torch.isfinite(scaling.to_model(actions)).all()


def test_any_leading_shape_is_accepted() -> None:
    scaling = ActionScaling(2, low=(-2.0, 0.0), high=(2.0, 1.0))
    env = torch.rand(4, 5, 3, 2) * torch.tensor([4.0, 1.0]) - torch.tensor(
        [2.0, 0.0]
    )  # (B, T, K, A)
    model = scaling.to_model(env)
    assert model.shape == (4, 5, 3, 2)
    assert model.abs().max() <= 1.0
    torch.testing.assert_close(model[1, 2, 0], scaling.to_model(env[1, 2, 0]))
    torch.testing.assert_close(scaling.to_env(model, clip=True), env)


def test_buffers_follow_the_module_and_the_state_dict() -> None:
    scaling = ActionScaling(2, low=(-2.0, None), high=(2.0, None))
    assert set(scaling.state_dict()) == {"center", "half_range", "bounded"}
    copy = ActionScaling(2)
    copy.load_state_dict(scaling.state_dict())
    actions = torch.tensor([1.0, 1.0])
    torch.testing.assert_close(copy.to_model(actions), scaling.to_model(actions))
    assert scaling.double().center.dtype == torch.float64


def test_bad_bounds_and_shapes_raise_value_errors() -> None:
    with pytest.raises(ValueError, match=r"low=1\.0 >= high=1\.0"):
        ActionScaling(1, low=(1.0,), high=(1.0,))
    with pytest.raises(ValueError, match=r"low has 1 entries but action_dim=2"):
        ActionScaling(2, low=(0.0,), high=(1.0, 1.0))
    scaling = ActionScaling(2, low=(0.0, 0.0), high=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        scaling.to_model(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="model_actions"):
        scaling.to_env(torch.zeros(2, 1))
