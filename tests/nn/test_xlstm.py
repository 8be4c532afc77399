"""xLSTM specifics: cells against the paper's unstabilized equations, stabilizer, blocks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seqrl.nn import XLSTM, XLSTMConfig
from seqrl.nn.xlstm import MLSTMBlock, SLSTMBlock
from seqrl.nn.xlstm_cells import CausalConv1d, mlstm_parallel, mlstm_recurrent

B, H, T, DH = 2, 2, 7, 4


def mlstm_inputs(gate_scale: float, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(3, B, H, T, DH, generator=generator).unbind(0)
    i_pre = gate_scale * torch.randn(B, H, T, generator=generator)
    f_pre = gate_scale * torch.randn(B, H, T, generator=generator) + 2.0
    return q, k / math.sqrt(DH), v, i_pre, f_pre


def zero_cell() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.zeros(B, H, DH, DH), torch.zeros(B, H, DH), torch.zeros(B, H)


def test_mlstm_matches_the_papers_unstabilized_equations() -> None:
    q, k, v, i_pre, f_pre = mlstm_inputs(gate_scale=1.0)
    C, n = torch.zeros(B, H, DH, DH), torch.zeros(B, H, DH)
    expected = []
    for t in range(T):  # C_t = f C + i v k^T, n_t = f n + i k, h = C q / max(|n.q|, 1)
        f, i = torch.sigmoid(f_pre[..., t]), torch.exp(i_pre[..., t])
        C = f[..., None, None] * C + i[..., None, None] * (v[..., t, :, None] * k[..., t, None, :])
        n = f[..., None] * n + i[..., None] * k[..., t, :]
        numerator = torch.einsum("bhvk,bhk->bhv", C, q[..., t, :])
        expected.append(numerator / (n * q[..., t, :]).sum(-1).abs().clamp(min=1)[..., None])
    expected = torch.stack(expected, 2)
    parallel, _ = mlstm_parallel(q, k, v, i_pre, f_pre, zero_cell())
    recurrent, _ = mlstm_recurrent(q, k, v, i_pre, f_pre, zero_cell())
    torch.testing.assert_close(parallel, expected, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(recurrent, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("gate_scale", [1.0, 60.0])
def test_mlstm_parallel_and_recurrent_forms_agree_even_where_exp_overflows(
    gate_scale: float,
) -> None:
    q, k, v, i_pre, f_pre = mlstm_inputs(gate_scale)
    i_pre[:, :, 2] = 200.0  # exp(200) overflows float32: only the stabilizer keeps this finite
    parallel, (C_p, n_p, m_p) = mlstm_parallel(q, k, v, i_pre, f_pre, zero_cell())
    recurrent, (C_r, n_r, m_r) = mlstm_recurrent(q, k, v, i_pre, f_pre, zero_cell())
    assert torch.isfinite(parallel).all()
    torch.testing.assert_close(parallel, recurrent, atol=1e-5, rtol=1e-4)
    for a, b in ((C_p, C_r), (n_p, n_r), (m_p, m_r)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_slstm_cell_matches_the_papers_unstabilized_equations() -> None:
    torch.manual_seed(0)
    block = SLSTMBlock(XLSTMConfig(width=8, layers=1, heads=2, slstm_at=(0,)))
    from_input = torch.randn(5, 3, 4, 8)  # (T, B, gates, D)
    cell = {key: torch.zeros(3, 8) for key in ("h", "c", "n", "m")}
    h, c, n = torch.zeros(3, 8), torch.zeros(3, 8), torch.zeros(3, 8)
    for t in range(5):
        cell = block._cell_step(from_input[t], cell)
        recurrent = torch.einsum("bhd,hdge->bghe", h.view(3, 2, 4), block.recurrent).reshape(
            3, 4, 8
        )
        i_pre, f_pre, z_pre, o_pre = (from_input[t] + recurrent).unbind(1)
        c = torch.sigmoid(f_pre) * c + torch.exp(i_pre) * torch.tanh(z_pre)
        n = torch.sigmoid(f_pre) * n + torch.exp(i_pre)
        h = torch.sigmoid(o_pre) * c / n
        torch.testing.assert_close(cell["h"], h, atol=1e-5, rtol=1e-4)
    # The stabilized state is the unstabilized one scaled by exp(-m).
    torch.testing.assert_close(cell["n"] * torch.exp(cell["m"]), n, atol=1e-4, rtol=1e-4)


def test_slstm_stays_finite_with_huge_gate_preactivations() -> None:
    torch.manual_seed(0)
    block = SLSTMBlock(XLSTMConfig(width=8, layers=1, heads=2, slstm_at=(0,)))
    cell = {key: torch.zeros(3, 8) for key in ("h", "c", "n", "m")}
    for scale in (300.0, -300.0, 300.0):
        from_input = torch.randn(3, 4, 8) * scale
        cell = block._cell_step(from_input, cell)
        assert all(torch.isfinite(t).all() for t in cell.values())


def test_causal_conv_masked_path_equals_the_fused_convolution() -> None:
    torch.manual_seed(0)
    conv = CausalConv1d(6, 4)
    x, state = torch.randn(2, 9, 6), torch.randn(2, 3, 6)
    fused, fused_state = conv(x, state, None, None)
    masked, masked_state = conv._masked(x, torch.cat([state, x], 1), None, None)
    torch.testing.assert_close(masked, fused, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(masked_state, fused_state)
    # And by hand for one token: y_5 = b + sum_k w[:, 3 - k] * x_(5 - k).
    by_hand = conv.bias + sum(conv.weight[:, 3 - back] * x[:, 5 - back] for back in range(4))
    torch.testing.assert_close(fused[:, 5], by_hand, atol=1e-6, rtol=1e-5)


def test_xlstm_places_slstm_blocks_where_asked() -> None:
    model = XLSTM(XLSTMConfig(width=8, layers=4, heads=2, slstm_at=(1, 3)))
    kinds = [type(block) for block in model.blocks]
    assert kinds == [MLSTMBlock, SLSTMBlock, MLSTMBlock, SLSTMBlock]
    with pytest.raises(ValueError, match="slstm_at"):
        XLSTMConfig(width=8, layers=2, slstm_at=(2,))


@torch.no_grad()
def test_xlstm_chunked_forward_equals_one_chunk() -> None:
    torch.manual_seed(0)
    short = XLSTM(XLSTMConfig(width=8, layers=2, heads=2, slstm_at=(1,), chunk_size=3)).eval()
    long = XLSTM(XLSTMConfig(width=8, layers=2, heads=2, slstm_at=(1,), chunk_size=64)).eval()
    long.load_state_dict(short.state_dict())
    x = torch.randn(2, 11, 8)
    torch.testing.assert_close(short(x)[0], long(x)[0], atol=1e-5, rtol=1e-4)


def test_mlstm_forget_gates_start_near_one() -> None:
    block = MLSTMBlock(XLSTMConfig(width=8, layers=1, heads=2))
    assert (F.logsigmoid(block.forget_gate.bias) > -0.05).all()
