"""The conformance battery every backbone must pass (parity, causality, gradients, resets)."""

from __future__ import annotations

import pytest
import torch
from backbone_cases import CASES, MEMORYLESS, WIDTH, WINDOW, build

from seqrl.nn import BACKBONES

BATCH = 4
LENGTH = 3 * WINDOW + 3  # at least 3x the window / memory length
ATOL = 1e-5


def inputs(seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, LENGTH, WIDTH, generator=generator)  # (B, T, D)


def resets() -> torch.Tensor:
    """Episode starts mid-sequence in rows 1 and 2 (twice in row 2); none in rows 0 and 3."""
    starts = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    starts[1, 5] = True
    starts[2, 7] = starts[2, 11] = True
    return starts


def padding() -> torch.Tensor:
    """Left padding (row 0), a gap (row 1), right padding (row 2), none (row 3)."""
    mask = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    mask[0, :3] = False
    mask[1, 6:9] = False
    mask[2, -2:] = False
    return mask


def skip_if_memoryless(case: str, reason: str) -> None:
    if case in MEMORYLESS:
        pytest.skip(f"{case} is memoryless (state {{}}): {reason}")


def assert_states_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), atol=ATOL, rtol=1e-4)


def test_cases_cover_every_registered_backbone() -> None:
    assert {case.split("-")[0] for case in CASES} == set(BACKBONES)


@torch.no_grad()
def test_step_matches_forward_with_episode_resets(case: str) -> None:
    model, x, starts = build(case), inputs(), resets()
    y, final = model(x, episode_start=starts)
    state, stepped = model.initial_state(BATCH, x.device), []
    for t in range(LENGTH):
        state = model.reset_state(state, starts[:, t])
        y_t, state = model.step(x[:, t : t + 1], state)
        stepped.append(y_t)
    torch.testing.assert_close(torch.cat(stepped, 1), y, atol=ATOL, rtol=1e-4)
    assert_states_close(state, final)


@torch.no_grad()
def test_step_over_real_tokens_matches_forward_with_padding(case: str) -> None:
    model, x, mask = build(case), inputs(), padding()
    starts = resets()
    starts[2, 4] = True  # an episode start on a real token ...
    starts[0, 1] = True  # ... and one on a padded token: the reset still happens
    y, final = model(x, mask=mask, episode_start=starts)
    for row in range(BATCH):
        state = model.initial_state(1, x.device)
        for t in range(LENGTH):
            if starts[row, t]:
                state = model.reset_state(state, torch.tensor([True]))
            if mask[row, t]:
                y_t, state = model.step(x[row : row + 1, t : t + 1], state)
                torch.testing.assert_close(y_t[0, 0], y[row, t], atol=ATOL, rtol=1e-4)
        row_state = {key: t[row : row + 1] for key, t in final.items()}
        assert_states_close(row_state, state)
    assert torch.isfinite(y).all()


@torch.no_grad()
def test_multi_token_steps_match_forward(case: str) -> None:
    model, x = build(case), inputs()
    y, _ = model(x)
    state, outputs, begin = model.initial_state(BATCH, x.device), [], 0
    for size in (1, 3, 2, 5, 4):
        y_n, state = model.step(x[:, begin : begin + size], state)
        assert y_n.shape == (BATCH, size, WIDTH)
        outputs.append(y_n)
        begin += size
    assert begin == LENGTH
    torch.testing.assert_close(torch.cat(outputs, 1), y, atol=ATOL, rtol=1e-4)


@torch.no_grad()
def test_forward_in_segments_matches_one_forward(case: str) -> None:
    model, x, mask, starts = build(case), inputs(), padding(), resets()
    y, final = model(x, mask=mask, episode_start=starts)
    state, outputs = None, []
    for segment in (slice(0, 6), slice(6, 7), slice(7, LENGTH)):
        y_s, state = model(x[:, segment], state, mask[:, segment], starts[:, segment])
        outputs.append(y_s)
    real = mask[..., None]
    torch.testing.assert_close(torch.cat(outputs, 1) * real, y * real, atol=ATOL, rtol=1e-4)
    assert_states_close(state, final)


@torch.no_grad()
@pytest.mark.parametrize("with_masks", [False, True], ids=["plain", "masked"])
def test_future_inputs_do_not_change_past_outputs(case: str, with_masks: bool) -> None:
    model, x, changed_at = build(case), inputs(), 2 * WINDOW
    kwargs = {"mask": padding(), "episode_start": resets()} if with_masks else {}
    y, _ = model(x, **kwargs)
    x_changed = x.clone()
    # A random direction: a constant shift of every feature is invisible to LayerNorm.
    x_changed[:, changed_at] += 3.0 * torch.randn(BATCH, WIDTH)
    y_changed, _ = model(x_changed, **kwargs)
    torch.testing.assert_close(y_changed[:, :changed_at], y[:, :changed_at], atol=1e-6, rtol=0)
    assert (y_changed[3, changed_at] - y[3, changed_at]).abs().max() > 1e-3  # row 3: all real


@pytest.mark.parametrize("with_masks", [False, True], ids=["plain", "masked"])
def test_every_parameter_receives_a_gradient(case: str, with_masks: bool) -> None:
    model = build(case).train()
    kwargs = {"mask": padding(), "episode_start": resets()} if with_masks else {}
    y, _ = model(inputs(), **kwargs)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    # A random projection: y.sum() would be blind to everything before a final LayerNorm.
    (y * weights).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        assert param.grad.abs().max() > 0, f"{name} has an all-zero gradient"


@torch.no_grad()
def test_reset_state_touches_only_done_rows(case: str) -> None:
    skip_if_memoryless(case, "it has no rows to reset, and a stepped state equals a fresh one")
    model, x = build(case), inputs()
    _, state = model.step(x[:, :5], model.initial_state(BATCH, x.device))
    before = {key: t.clone() for key, t in state.items()}
    done = torch.tensor([True, False, True, False])
    after = model.reset_state(state, done)
    fresh = model.initial_state(BATCH, x.device)
    changed = False
    for key in before:
        torch.testing.assert_close(after[key][~done], before[key][~done], atol=0, rtol=0)
        torch.testing.assert_close(after[key][done], fresh[key][done], atol=0, rtol=0)
        changed |= not torch.equal(before[key][done], fresh[key][done])
    assert changed, "the stepped state should differ from the fresh one before the reset"
    # A reset row continues exactly like a fresh episode.
    y_reset, _ = model.step(x[:, 5:8], after)
    y_fresh, _ = model.step(x[:, 5:8], model.initial_state(BATCH, x.device))
    torch.testing.assert_close(y_reset[done], y_fresh[done], atol=ATOL, rtol=1e-4)


@torch.no_grad()
def test_episode_start_blocks_information_from_the_previous_episode(case: str) -> None:
    model, x, start = build(case), inputs(), 2 * WINDOW + 1
    starts = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    starts[:, start] = True
    y, _ = model(x, episode_start=starts)
    y_alone, _ = model(x[:, start:])
    torch.testing.assert_close(y[:, start:], y_alone, atol=ATOL, rtol=1e-4)


@torch.no_grad()
def test_fully_padded_row_gives_finite_output_and_keeps_state(case: str) -> None:
    model, x = build(case), inputs()
    mask = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    mask[1] = False
    y, state = model(x, mask=mask)
    assert torch.isfinite(y).all()
    fresh = model.initial_state(BATCH, x.device)
    for key in state:
        torch.testing.assert_close(state[key][1], fresh[key][1], atol=0, rtol=0)


def test_forward_returns_a_detached_state_and_keeps_its_input(case: str) -> None:
    model, x = build(case).train(), inputs()
    with torch.no_grad():
        _, given = model.step(x[:, :3], model.initial_state(BATCH, x.device))
    snapshot = {key: t.clone() for key, t in given.items()}
    _, state = model(x, given)
    assert all(not t.requires_grad for t in state.values())
    for key in given:
        assert torch.equal(given[key], snapshot[key]), f"forward modified its input state[{key!r}]"


@torch.no_grad()
def test_step_keeps_state_shapes_fixed(case: str) -> None:
    model, x = build(case), inputs()
    state = model.initial_state(BATCH, x.device)
    shapes = {key: (t.shape, t.dtype) for key, t in state.items()}
    for t in range(LENGTH):
        _, state = model.step(x[:, t : t + 1], state)
        assert {key: (v.shape, v.dtype) for key, v in state.items()} == shapes
    assert all(v.shape[0] == BATCH for v in state.values()), "state tensors are batch first"


def test_bad_inputs_raise_value_errors_naming_the_argument(case: str) -> None:
    model, x = build(case), inputs()
    with pytest.raises(ValueError, match="width"):
        model(x[..., :-1])
    with pytest.raises(ValueError, match="mask"):
        model(x, mask=torch.ones(BATCH, LENGTH))  # float, not bool
    with pytest.raises(ValueError, match="episode_start"):
        model(x, episode_start=torch.zeros(BATCH, LENGTH + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="done"):
        model.reset_state(model.initial_state(BATCH), torch.ones(BATCH, 2, dtype=torch.bool))
    skip_if_memoryless(case, "an empty state has no batch size to check the length of done against")
    with pytest.raises(ValueError, match="done"):
        model.reset_state(model.initial_state(BATCH), torch.ones(BATCH + 1, dtype=torch.bool))


@torch.no_grad()
def test_forward_without_returned_state_gives_the_same_outputs(case: str) -> None:
    model, x, mask, starts = build(case), inputs(), padding(), resets()
    _, given = model.step(x[:, :3], model.initial_state(BATCH, x.device))
    y, _ = model(x, given, mask, starts)
    y_only, nothing = model(x, given, mask, starts, return_state=False)
    assert nothing is None
    torch.testing.assert_close(y_only, y, atol=0, rtol=0)


def test_state_dict_has_no_shared_tensors(case: str) -> None:
    # Checkpoints are safetensors files, which refuse two names for one tensor.
    tensors = build(case).state_dict().values()
    assert len({t.data_ptr() for t in tensors}) == len(tensors)
