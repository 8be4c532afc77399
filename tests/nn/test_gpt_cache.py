"""GPT: the in-place ring append for multi-token steps, outputs for selected tokens only, and
the left-padding mask path, each against the general computation it replaces."""

from __future__ import annotations

import pytest
import torch

from seqrl.nn import GPT, GPTConfig, GTrXL, GTrXLConfig


def _gpt(window: int | None, step_tokens: int = 3, layers: int = 3) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(width=32, layers=layers, heads=4, window=window, max_len=400,
                       step_tokens=step_tokens)  # fmt: skip
    model = GPT(config).eval()
    with torch.no_grad():  # sharper attention than at initialization, as in a trained model
        for block in model.blocks:
            block.qkv.weight.mul_(6.0)
    return model


@torch.no_grad()
@pytest.mark.parametrize("window", [4, 7, None])
def test_steps_of_up_to_step_tokens_append_in_place_and_match_the_forward(window):
    """Rows step 3, 2 or 1 tokens at a time over episodes many windows long, with resets."""
    model, batch, length = _gpt(window), 3, 120
    x = torch.randn(batch, length, 32)
    starts = torch.zeros(batch, length, dtype=torch.bool)
    starts[1, 45], starts[2, 46], starts[2, 90] = True, True, True  # mid-step, step-aligned
    y, _ = model(x, episode_start=starts)
    state, outputs, begin, sizes = model.initial_state(batch), [], 0, (3, 2, 1, 3, 3, 2)
    pointers = {key: t.data_ptr() for key, t in state.items()}
    while begin < length:
        size = min(sizes[len(outputs) % len(sizes)], length - begin)
        for t in range(begin, begin + size):  # a reset inside the step: split it there
            if t > begin and starts[:, t].any():
                size = t - begin
                break
        if starts[:, begin].any():
            state = model.reset_state(state, starts[:, begin])
        y_step, state = model.step(x[:, begin : begin + size], state)
        outputs.append(y_step)
        begin += size
    torch.testing.assert_close(torch.cat(outputs, 1), y, atol=2e-5, rtol=1e-4)
    assert {key: t.data_ptr() for key, t in state.items()} == pointers  # written in place
    if window is not None:
        assert state["k.0"].shape[2] == window + 2  # the ring: W + step_tokens - 1 slots


@torch.no_grad()
def test_a_ring_without_spare_slots_still_steps_several_tokens_exactly():
    model = _gpt(4, step_tokens=1)
    x = torch.randn(2, 30, 32)
    y, _ = model(x)
    state, outputs = model.initial_state(2), []
    for begin in range(0, 30, 3):
        y_step, state = model.step(x[:, begin : begin + 3], state)
        outputs.append(y_step)
    torch.testing.assert_close(torch.cat(outputs, 1), y, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("window", [5, None])
@pytest.mark.parametrize("masks", ["none", "left-padding", "general"])
def test_selected_outputs_equal_the_full_outputs_at_those_tokens(window, masks):
    model, x = _gpt(window), torch.randn(3, 24, 32, requires_grad=True)
    mask = torch.ones(3, 24, dtype=torch.bool)
    starts = None
    if masks != "none":
        mask[0, :7] = False  # left padding
    if masks == "general":
        starts = torch.zeros(3, 24, dtype=torch.bool)
        starts[1, 10] = True
    select = slice(1, None, 3)
    full, _ = model(x, mask=mask, episode_start=starts, return_state=False)
    part, _ = model(x, mask=mask, episode_start=starts, return_state=False, select=select)
    assert part.shape == (3, 8, 32)
    torch.testing.assert_close(part, full[:, select], atol=1e-5, rtol=1e-4)
    (grad_full,) = torch.autograd.grad(full[:, select].sum(), x)
    (grad_part,) = torch.autograd.grad(part.sum(), x)
    torch.testing.assert_close(grad_part, grad_full, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        state = model.initial_state(3)
        y_full, _ = model.step(x[:, :3], {k: t.clone() for k, t in state.items()})
        y_last, _ = model.step(x[:, :3], state, select=slice(-1, None))
    torch.testing.assert_close(y_last, y_full[:, -1:], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_gtrxl_selected_outputs_and_state_equal_the_full_forward():
    torch.manual_seed(0)
    model = GTrXL(GTrXLConfig(width=32, layers=2, heads=2, memory=5)).eval()
    x, mask = torch.randn(2, 15, 32), torch.ones(2, 15, dtype=torch.bool)
    mask[1, :4] = False
    full, full_state = model(x, mask=mask)
    part, part_state = model(x, mask=mask, select=slice(2, None, 3))
    torch.testing.assert_close(part, full[:, 2::3], atol=1e-5, rtol=1e-4)
    for key in full_state:
        torch.testing.assert_close(part_state[key], full_state[key])


@torch.no_grad()
@pytest.mark.parametrize("window", [5, None])
def test_left_padding_mask_path_equals_the_general_mask(window):
    """A left-padding-only mask takes a cheaper mask; an all-False episode_start forces the
    general one (segment ids and positions): the outputs at real tokens must agree."""
    model, x = _gpt(window), torch.randn(4, 18, 32)
    mask = torch.ones(4, 18, dtype=torch.bool)
    mask[0, :5], mask[1, :17], mask[2, :] = False, False, False
    no_starts = torch.zeros(4, 18, dtype=torch.bool)
    fast, _ = model(x, mask=mask, return_state=False)
    general, _ = model(x, mask=mask, episode_start=no_starts, return_state=False)
    torch.testing.assert_close(fast * mask[..., None], general * mask[..., None])
    assert torch.isfinite(fast).all()


@torch.no_grad()
@pytest.mark.parametrize("window", [4, 7, None])
def test_padded_rows_of_a_step_compute_what_their_real_tokens_compute_alone(window):
    """`step(pad=...)`: rows whose episode starts inside a step (DT: no a_{t-1} after a reset)
    share one pass with the others; their padding is never read, here or in later steps, also
    once a ring has wrapped around past the slots the padding was written to."""
    model, batch, width = _gpt(window), 4, 32
    padded, plain = model.initial_state(batch), model.initial_state(batch)
    torch.manual_seed(1)
    for t in range(40):
        x = torch.randn(batch, 3, width)
        fresh = torch.zeros(batch, dtype=torch.bool)
        if t in (11, 25):  # rows 1 and 3 start episodes here, row 0 too at 25
            fresh[1] = fresh[3] = True
            fresh[0] = t == 25
            padded = model.reset_state(padded, fresh)
            plain = model.reset_state(plain, fresh)
        pad = fresh.long() if t > 0 else None  # no padding at all on the first step
        y, padded = model.step(x, padded, pad=pad, select=slice(-1, None))
        # the reference: every row stepped alone with its real tokens
        for row in range(batch):
            real = x[row : row + 1, 1:] if pad is not None and pad[row] else x[row : row + 1]
            state = {key: value[row : row + 1] for key, value in plain.items()}
            y_row, _ = model.step(real, state)  # writes into plain's row (views)
            torch.testing.assert_close(y[row, -1], y_row[0, -1], atol=2e-5, rtol=1e-4)
        assert torch.equal(padded["pos"], plain["pos"])


def test_pad_is_refused_for_rows_with_history_and_for_all_padding_rows():
    model = _gpt(4)
    state = model.initial_state(2)
    model.step(torch.randn(2, 3, 32), state)
    with pytest.raises(ValueError, match="empty cache"):
        model.step(torch.randn(2, 3, 32), state, pad=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="at least one real token"):
        model.step(torch.randn(2, 3, 32), model.initial_state(2), pad=torch.tensor([3, 0]))
