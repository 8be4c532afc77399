"""Attention masks, the SDPA vs math paths, and the GPT KV cache."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqrl.nn import GPT, GPTConfig
from seqrl.nn.attention import (
    attention,
    banded_causal_mask,
    cache_attention,
    cache_slot_positions,
    flash_attn_available,
)


def test_banded_mask_matches_hand_built_reference() -> None:
    # window 3: each query sees itself and the two tokens before it.
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(banded_causal_mask(6, 3), expected)
    assert torch.equal(banded_causal_mask(4, 1), torch.eye(4, dtype=torch.bool))
    assert torch.equal(banded_causal_mask(5, 10), torch.ones(5, 5, dtype=torch.bool).tril())


def test_ring_cache_slots_hold_the_latest_positions() -> None:
    # 3 slots; rows have written 0, 2, 3 and 7 tokens. Slot s holds the latest p = s mod 3.
    position = torch.tensor([0, 2, 3, 7])
    expected = torch.tensor([[-1, -1, -1], [0, 1, -1], [0, 1, 2], [6, 4, 5]])
    assert torch.equal(cache_slot_positions(position, 3, ring=True), expected)
    full = torch.tensor([[-1, -1, -1], [0, 1, -1], [0, 1, 2], [0, 1, 2]])
    assert torch.equal(cache_slot_positions(position.clamp(max=3), 3, ring=False), full)


@settings(max_examples=40, deadline=None)
@given(
    query=st.integers(1, 5),
    key=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    use_bias=st.booleans(),
)
def test_sdpa_and_math_paths_agree_on_any_mask(
    query: int, key: int, seed: int, use_bias: bool
) -> None:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 2, query, 8, generator=generator)  # (B, H, Tq, Dh)
    k, v = (
        torch.randn(2, 2, key, 8, generator=generator),
        torch.randn(2, 2, key, 8, generator=generator),
    )
    allowed = torch.rand(2, 1, query, key, generator=generator) < 0.5  # some rows empty
    bias = torch.randn(2, 2, query, key, generator=generator) if use_bias else None
    fused = attention(q, k, v, allowed, bias, backend="sdpa")
    reference = attention(q, k, v, allowed, bias, backend="math")
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-4)
    empty = ~allowed.any(-1)  # (B, 1, Tq)
    assert torch.isfinite(fused).all()
    assert (fused.abs().sum(-1)[empty.expand(-1, 2, -1)] == 0).all()


def test_causal_flag_equals_explicit_causal_mask() -> None:
    q, k, v = torch.randn(3, 2, 1, 5, 8).unbind(0)
    explicit = attention(q, k, v, banded_causal_mask(5, 5), backend="math")
    torch.testing.assert_close(attention(q, k, v, causal=True), explicit, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("ring", [False, True])
@pytest.mark.parametrize("heads", [1, 2])
def test_cache_attention_equals_sdpa_over_partly_filled_and_ring_caches(ring, heads) -> None:
    torch.manual_seed(0)
    batch, size, head_width = 5, 9, 8
    cache_k = torch.randn(batch, heads, size, head_width)
    cache_v = torch.randn(batch, heads, size, head_width)
    for queries in range(1, 5):
        # rows at different episode positions: empty-ish, partly filled, full, wrapped around
        end = torch.tensor([queries, queries + 2, 7, size, 3 * size + 4])
        positions = end[:, None] - queries + torch.arange(queries)  # (B, Tq) the new tokens
        limit = size if ring else int(end.max().clamp(max=size))
        if not ring:
            end, positions = end.clamp(max=size), positions.clamp(max=size - 1)
        held = cache_slot_positions(end, size, ring)[:, None, :limit]  # (B, 1, S')
        allowed = (held >= 0) & (held <= positions[:, :, None])
        if ring:
            allowed &= positions[:, :, None] - held < 6  # a window of 6
        allowed = allowed[:, None]  # (B, 1, Tq, S')
        q = torch.randn(batch, heads, queries, head_width)
        keys, values = cache_k[:, :, :limit], cache_v[:, :, :limit]  # strided views
        fast = cache_attention(q, keys, values, allowed)
        for backend in ("sdpa", "math"):
            expected = attention(q, keys, values, allowed, backend=backend)
            torch.testing.assert_close(fast, expected, atol=1e-6, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("window", [None, 4])
def test_gpt_steps_use_cache_attention_and_equal_sdpa_steps(window, monkeypatch) -> None:
    import seqrl.nn.gpt

    calls = []

    def counted(*args):
        calls.append(args[0].shape)
        return cache_attention(*args)

    monkeypatch.setattr(seqrl.nn.gpt, "cache_attention", counted)
    torch.manual_seed(0)
    config = GPTConfig(width=16, layers=2, heads=2, window=window, max_len=64, step_tokens=3)
    fast = GPT(config).eval()
    reference = GPT(GPTConfig(**{**config.__dict__, "backend": "sdpa"})).eval()
    reference.load_state_dict(fast.state_dict())
    states = [fast.initial_state(3), reference.initial_state(3)]
    for t in range(12):
        x = torch.randn(3, 3 if t % 4 else 1, 16)
        y_fast, states[0] = fast.step(x, states[0], select=slice(-1, None))
        y_ref, states[1] = reference.step(x, states[1], select=slice(-1, None))
        torch.testing.assert_close(y_fast, y_ref, atol=1e-6, rtol=1e-5)
        if t == 6:  # an episode ends for one env: its cache row empties
            done = torch.tensor([False, True, False])
            states = [fast.reset_state(states[0], done), reference.reset_state(states[1], done)]
    assert len(calls) == 12 * 2


@torch.no_grad()
@pytest.mark.parametrize("window", [None, 3])
def test_gpt_sdpa_and_math_backends_agree(window: int | None) -> None:
    torch.manual_seed(0)
    config = GPTConfig(width=16, layers=2, heads=2, window=window, max_len=32, backend="sdpa")
    fused = GPT(config).eval()
    reference = GPT(GPTConfig(**{**config.__dict__, "backend": "math"})).eval()
    reference.load_state_dict(fused.state_dict())
    x = torch.randn(3, 12, 16)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[0, :4] = False
    starts = torch.zeros(3, 12, dtype=torch.bool)
    starts[1, 6] = True
    for kwargs in ({}, {"mask": mask, "episode_start": starts}):
        y_fused, _ = fused(x, **kwargs)
        y_math, _ = reference(x, **kwargs)
        torch.testing.assert_close(y_fused, y_math, atol=1e-5, rtol=1e-4)
    y_fused, _ = fused.step(x[:, :5], fused.initial_state(3))
    y_math, _ = reference.step(x[:, :5], reference.initial_state(3))
    torch.testing.assert_close(y_fused, y_math, atol=1e-5, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("path", ["forward", "step"])
def test_gpt_window_is_itself_and_the_previous_w_minus_1_tokens(path: str) -> None:
    torch.manual_seed(0)
    window, length, t = 4, 12, 10
    model = GPT(GPTConfig(width=16, layers=1, heads=2, window=window)).eval()
    x = torch.randn(1, length, 16)

    def output_at_t(inputs: torch.Tensor) -> torch.Tensor:
        if path == "forward":
            return model(inputs)[0][0, t]
        state, outputs = model.initial_state(1), []
        for i in range(length):
            y, state = model.step(inputs[:, i : i + 1], state)
            outputs.append(y)
        return torch.cat(outputs, 1)[0, t]

    base = output_at_t(x)
    for offset, visible in ((window - 1, True), (window, False)):
        changed = x.clone()
        changed[0, t - offset] += torch.randn(16)
        moved = (output_at_t(changed) - base).abs().max()
        assert (moved > 1e-4) == visible, f"token t-{offset} visible={visible}, moved {moved}"


@torch.no_grad()
def test_gpt_ring_cache_keeps_shape_and_storage_over_long_episodes() -> None:
    model = GPT(GPTConfig(width=16, layers=2, heads=2, window=3, max_len=4, step_tokens=3)).eval()
    state = model.initial_state(2)
    pointers = {key: t.data_ptr() for key, t in state.items()}
    for _ in range(20):  # far past max_len: the ring buffer does not care
        _, state = model.step(torch.randn(2, 1, 16), state)
    assert state["k.0"].shape == (2, 2, 3 + 2, 8)  # (B, H, W + step_tokens - 1, Dh)
    assert {key: t.data_ptr() for key, t in state.items()} == pointers
    assert state["pos"].tolist() == [20, 20]


@torch.no_grad()
def test_gpt_full_cache_refuses_to_step_past_max_len() -> None:
    model = GPT(GPTConfig(width=16, layers=1, heads=2, window=None, max_len=5)).eval()
    _, state = model.step(torch.randn(2, 5, 16), model.initial_state(2))
    with pytest.raises(ValueError, match="max_len=5"):
        model.step(torch.randn(2, 1, 16), state)
    with pytest.raises(ValueError, match="max_len=5"):
        model(torch.randn(2, 6, 16))
    state = model.reset_state(state, torch.tensor([True, True]))
    model.step(torch.randn(2, 1, 16), state)  # a reset makes room again


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and flash_attn_available()), reason="needs CUDA and flash-attn"
)
@torch.no_grad()
def test_flash_kvcache_step_matches_sdpa_step() -> None:
    torch.manual_seed(0)
    config = GPTConfig(width=64, layers=2, heads=2, max_len=64, backend="flash")
    flash = GPT(config).cuda().half().eval()
    sdpa = GPT(GPTConfig(**{**config.__dict__, "backend": "sdpa"})).cuda().half().eval()
    sdpa.load_state_dict(flash.state_dict())
    x = torch.randn(3, 10, 64, device="cuda", dtype=torch.half)
    state_flash, state_sdpa = flash.initial_state(3), sdpa.initial_state(3)
    for begin, size in ((0, 4), (4, 1), (5, 5)):
        y_flash, state_flash = flash.step(x[:, begin : begin + size], state_flash)
        y_sdpa, state_sdpa = sdpa.step(x[:, begin : begin + size], state_sdpa)
        torch.testing.assert_close(y_flash, y_sdpa, atol=2e-2, rtol=2e-2)


def test_dropout_keeps_each_element_with_probability_1_minus_p_and_rescales() -> None:
    from seqrl.nn.attention import Dropout

    torch.manual_seed(0)
    drop, x = Dropout(0.1), torch.ones(400_000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 3e-3  # binomial std: 5e-4
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.9))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.9)  # the gradient uses the same mask
    assert drop.eval()(x) is x and Dropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)
