"""xLSTM backbone: mLSTM and sLSTM blocks in plain PyTorch.

Beck et al., 2024, "xLSTM: Extended Long Short-Term Memory" (NeurIPS). Both cells use exponential
input gates, sigmoid forget gates in log space, and the stabilizer state m that keeps exp() finite:

    m_t = max(log f_t + m_{t-1}, i~_t),  i'_t = exp(i~_t - m_t),  f'_t = exp(log f_t + m_{t-1} - m_t)

- mLSTM (matrix memory, fully parallelisable): C_t = f' C_{t-1} + i' v_t k_t^T, normalizer
  n_t = f' n_{t-1} + i' k_t, h~_t = C_t q_t / (max(|n_t . q_t|, exp(-m_t)) + eps). Training uses
  the parallel form (a decay matrix D_tj over the chunk, plus one column for the incoming state,
  so a chunk can continue any state); `step` uses the recurrent form above. Block (the paper's
  pre-up-projection block, as in the official code): LN -> up-projection x2 -> causal conv4 +
  SiLU -> q, k (v from the pre-conv branch) -> mLSTM -> head-wise norm -> + learnable skip ->
  * SiLU(second branch) -> down-projection -> residual.
- sLSTM (scalar memory with recurrent, head-wise block-diagonal matrices R; recurrent only):
  c_t = f' c + i' tanh(z~), n_t = f' n + i', h_t = sigmoid(o~) * c_t / n_t. Block (post-up-
  projection): LN -> causal conv4 + SiLU feeding the i, f gates -> sLSTM -> head-wise norm ->
  residual, then LN -> gated GELU MLP (factor 4/3) -> residual.

What differs from the official implementation: the q/k/v projections are dense (not block-wise
with block size 4); the stabilizer of a fresh sLSTM state is set per row (the official code tests
the whole batch); an mLSTM episode starts from m = 0 in both forms, so the two forms agree exactly
and a reset is simply zeroing the row; padding and episode starts inside a chunk are handled
(padded tokens skip the recurrence and the convolution). The CUDA kernels of the `xlstm` package
are not wired in: this pure-PyTorch path is the reference and runs everywhere.

State (batch first), per block i: mLSTM {"i.C": (B, H, Dh, Dh), "i.n": (B, H, Dh), "i.m": (B, H),
"i.conv": (B, K-1, 2D)}; sLSTM {"i.h", "i.c", "i.n", "i.m": (B, D), "i.conv": (B, K-1, D)}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqrl.nn.base import (
    State,
    as_done,
    check_inputs,
    check_state,
    detach_state,
    zero_rows,
)
from seqrl.nn.xlstm_cells import CausalConv1d, HeadwiseNorm, mlstm_parallel, mlstm_recurrent


@dataclass
class XLSTMConfig:
    width: int = 128
    """D: token width (inputs and outputs)."""
    layers: int = 2
    """Number of blocks."""
    heads: int = 1
    """Heads of every cell; must divide `width` (sLSTM) and the mLSTM inner width."""
    slstm_at: tuple[int, ...] = ()
    """Indices of the blocks that are sLSTM blocks; all others are mLSTM blocks."""
    dropout: float = 0.0
    """Dropout on residual branches (inactive in eval())."""
    conv_kernel: int = 4
    """Causal depth-wise convolution length in every block (1 = no temporal mixing)."""
    mlstm_proj_factor: float = 2.0
    """mLSTM inner width as a multiple of `width`."""
    slstm_ffn_factor: float = 4 / 3
    """sLSTM gated-MLP hidden width as a multiple of `width`."""
    chunk_size: int = 64
    """The parallel forward runs over chunks of this many tokens (memory O(T * chunk))."""

    def __post_init__(self) -> None:
        self.slstm_at = tuple(self.slstm_at)
        bad = [i for i in self.slstm_at if not 0 <= i < self.layers]
        if bad:
            raise ValueError(
                f"xLSTM: slstm_at indices {bad} out of range for layers={self.layers}."
            )
        inner = round(self.mlstm_proj_factor * self.width)
        if self.width % self.heads or inner % self.heads:
            raise ValueError(
                f"xLSTM: heads={self.heads} must divide width={self.width} and the mLSTM inner "
                f"width {inner}."
            )
        if self.conv_kernel < 1 or self.chunk_size < 1:
            raise ValueError("xLSTM: conv_kernel and chunk_size must be >= 1.")


class MLSTMBlock(nn.Module):
    """Pre-up-projection residual block around the mLSTM cell."""

    def __init__(self, config: XLSTMConfig) -> None:
        super().__init__()
        width, heads = config.width, config.heads
        inner = round(config.mlstm_proj_factor * width)
        self.heads, self.inner = heads, inner
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * inner)
        self.conv = CausalConv1d(inner, config.conv_kernel)
        self.q = nn.Linear(inner, inner, bias=False)
        self.k = nn.Linear(inner, inner, bias=False)
        self.v = nn.Linear(inner, inner, bias=False)
        self.input_gate = nn.Linear(3 * inner, heads)
        self.forget_gate = nn.Linear(3 * inner, heads)
        self.out_norm = HeadwiseNorm(inner, heads)
        self.skip = nn.Parameter(torch.ones(inner))
        self.down = nn.Linear(inner, width)
        self.drop = nn.Dropout(config.dropout)
        # Official initialisation: gates start from their biases; forget gates near 1.
        nn.init.zeros_(self.input_gate.weight)
        nn.init.normal_(self.input_gate.bias, std=0.1)
        nn.init.zeros_(self.forget_gate.weight)
        with torch.no_grad():
            self.forget_gate.bias.copy_(torch.linspace(3.0, 6.0, heads))

    def initial_state(
        self, batch_size: int, device: torch.device | str, dtype: torch.dtype
    ) -> State:
        head_width = self.inner // self.heads
        zeros = lambda *shape: torch.zeros(batch_size, *shape, device=device, dtype=dtype)  # noqa: E731
        return {
            "C": zeros(self.heads, head_width, head_width),
            "n": zeros(self.heads, head_width),
            "m": zeros(self.heads),
            "conv": zeros(self.conv.kernel - 1, self.inner),
        }

    def forward(
        self, x: Tensor, state: State, valid: Tensor | None, starts: Tensor | None, parallel: bool
    ) -> tuple[Tensor, State]:
        batch, length, _ = x.shape
        heads, head_width = self.heads, self.inner // self.heads
        branch, gate = self.up(self.norm(x)).chunk(2, -1)  # (B, T, inner) each
        conv, conv_state = self.conv(branch, state["conv"], valid, starts)
        conv = F.silu(conv)
        q, k, v = self.q(conv), self.k(conv), self.v(branch)  # (B, T, inner)
        gates_in = torch.cat([q, k, v], -1)  # (B, T, 3 inner)
        i_pre = self.input_gate(gates_in).transpose(1, 2)  # (B, H, T)
        f_pre = self.forget_gate(gates_in).transpose(1, 2)

        def heads_first(t: Tensor) -> Tensor:
            return t.view(batch, length, heads, head_width).transpose(1, 2)  # (B, H, T, Dh)

        q, k, v = heads_first(q), heads_first(k) / math.sqrt(head_width), heads_first(v)
        cell = (state["C"], state["n"], state["m"])
        if parallel:
            h, (C, n, m) = mlstm_parallel(q, k, v, i_pre, f_pre, cell, valid, starts)
        else:
            h, (C, n, m) = mlstm_recurrent(q, k, v, i_pre, f_pre, cell)
        h = h.transpose(1, 2).reshape(batch, length, self.inner)  # (B, T, inner)
        h = (self.out_norm(h) + self.skip * conv) * F.silu(gate)
        return x + self.drop(self.down(h)), {"C": C, "n": n, "m": m, "conv": conv_state}


class SLSTMBlock(nn.Module):
    """Post-up-projection residual block around the sLSTM cell, followed by a gated MLP."""

    def __init__(self, config: XLSTMConfig) -> None:
        super().__init__()
        width, heads = config.width, config.heads
        self.width, self.heads = width, heads
        head_width = width // heads
        self.norm = nn.LayerNorm(width)
        self.conv = CausalConv1d(width, config.conv_kernel)
        self.input_forget = nn.Linear(width, 2 * width)  # i~, f~ from the convolved branch
        self.cell_output = nn.Linear(width, 2 * width)  # z~, o~ from the normed input
        self.recurrent = nn.Parameter(torch.randn(heads, head_width, 4, head_width) * 0.02)
        self.out_norm = HeadwiseNorm(width, heads)
        self.ffn_norm = nn.LayerNorm(width)
        hidden = 8 * math.ceil(config.slstm_ffn_factor * width / 8)
        self.ffn_up = nn.Linear(width, 2 * hidden)
        self.ffn_down = nn.Linear(hidden, width)
        self.drop = nn.Dropout(config.dropout)
        with torch.no_grad():
            self.input_forget.bias[:width].zero_()
            self.input_forget.bias[width:].copy_(torch.linspace(3.0, 6.0, width))

    def initial_state(
        self, batch_size: int, device: torch.device | str, dtype: torch.dtype
    ) -> State:
        zeros = lambda *shape: torch.zeros(batch_size, *shape, device=device, dtype=dtype)  # noqa: E731
        state = {key: zeros(self.width) for key in ("h", "c", "n", "m")}
        state["conv"] = zeros(self.conv.kernel - 1, self.width)
        return state

    def forward(
        self, x: Tensor, state: State, valid: Tensor | None, starts: Tensor | None, parallel: bool
    ) -> tuple[Tensor, State]:
        del parallel  # the sLSTM has memory mixing: recurrent only
        normed = self.norm(x)
        conv, conv_state = self.conv(normed, state["conv"], valid, starts)
        i_pre, f_pre = self.input_forget(F.silu(conv)).chunk(2, -1)  # (B, T, D)
        z_pre, o_pre = self.cell_output(normed).chunk(2, -1)
        from_input = torch.stack([i_pre, f_pre, z_pre, o_pre], 2)  # (B, T, 4, D)
        cell = {key: state[key] for key in ("h", "c", "n", "m")}
        outputs = []
        for t in range(x.shape[1]):
            if starts is not None:
                cell = zero_rows(cell, starts[:, t])
            stepped = self._cell_step(from_input[:, t], cell)
            if valid is not None:
                keep = valid[:, t, None]  # (B, 1)
                stepped = {key: torch.where(keep, stepped[key], cell[key]) for key in cell}
            cell = stepped
            outputs.append(cell["h"])
        h = self.out_norm(torch.stack(outputs, 1))  # (B, T, D)
        y = x + self.drop(h)
        up, gate = self.ffn_up(self.ffn_norm(y)).chunk(2, -1)
        y = y + self.drop(self.ffn_down(F.gelu(gate) * up))
        return y, {**cell, "conv": conv_state}

    def _cell_step(self, from_input: Tensor, cell: State) -> State:
        batch, heads = from_input.shape[0], self.heads
        h_prev = cell["h"].view(batch, heads, -1)  # (B, H, Dh)
        recurrent = torch.einsum("bhd,hdge->bghe", h_prev, self.recurrent).reshape(batch, 4, -1)
        i_pre, f_pre, z_pre, o_pre = (from_input + recurrent).unbind(1)  # (B, D) each
        log_f = F.logsigmoid(f_pre)
        m_prev, n_prev = cell["m"], cell["n"]
        fresh = n_prev == 0  # a fresh state has no stabilizer yet: m_t = i~_t
        m = torch.where(fresh, i_pre, torch.maximum(log_f + m_prev, i_pre))
        # Keep the exp() argument finite in both where() branches so gradients stay finite.
        decay = torch.exp(torch.where(fresh, 0.0, log_f + m_prev - m))
        f_gate = torch.where(fresh, 0.0, decay)
        i_gate = torch.exp(i_pre - m)
        c = f_gate * cell["c"] + i_gate * torch.tanh(z_pre)
        n = f_gate * n_prev + i_gate
        h = torch.sigmoid(o_pre) * c / n
        return {"h": h, "c": c, "n": n, "m": m}


class XLSTM(nn.Module):
    """A stack of mLSTM/sLSTM blocks over (B, T, D) tokens; see the module docstring."""

    def __init__(self, config: XLSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.width = config.width
        self.blocks = nn.ModuleList(
            SLSTMBlock(config) if i in config.slstm_at else MLSTMBlock(config)
            for i in range(config.layers)
        )
        self.ln_final = nn.LayerNorm(config.width)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zero state of every block, keys prefixed by the block index ("0.C", "1.h", ...)."""
        param = self.ln_final.weight
        device = param.device if device is None else device
        state: State = {}
        for i, block in enumerate(self.blocks):
            assert isinstance(block, MLSTMBlock | SLSTMBlock)
            for key, tensor in block.initial_state(batch_size, device, param.dtype).items():
                state[f"{i}.{key}"] = tensor
        return state

    def reset_state(self, state: State, done: Tensor) -> State:
        """Zero the rows where done (B,) is True (returns new tensors)."""
        rows = next(iter(state.values())).shape[0]
        return zero_rows(state, as_done(done, rows, self.ln_final.weight.device))

    def forward(
        self,
        x: Tensor,
        state: State | None = None,
        mask: Tensor | None = None,
        episode_start: Tensor | None = None,
        *,
        return_state: bool = True,
    ) -> tuple[Tensor, State | None]:
        """x (B, T, D) -> y (B, T, D) and the state after the last real token (detached).

        mLSTM blocks use the parallel form chunk by chunk (`chunk_size` tokens, gradients flow
        across chunks); sLSTM blocks run their recurrence.
        """
        check_inputs("XLSTM", x, self.width, mask, episode_start)
        if state is None:
            state = self.initial_state(x.shape[0], x.device)
        outputs = []
        for begin in range(0, x.shape[1], self.config.chunk_size):
            chunk = slice(begin, begin + self.config.chunk_size)
            valid = mask[:, chunk] if mask is not None else None
            starts = episode_start[:, chunk] if episode_start is not None else None
            y, state = self._run(x[:, chunk], state, valid, starts, parallel=True)
            outputs.append(y)
        return torch.cat(outputs, 1), detach_state(state) if return_state else None

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, n, D) -> y (B, n, D) with the recurrent form of every cell."""
        check_inputs("XLSTM", x, self.width, None, None)
        return self._run(x, state, None, None, parallel=False)

    def _run(
        self, x: Tensor, state: State, valid: Tensor | None, starts: Tensor | None, parallel: bool
    ) -> tuple[Tensor, State]:
        check_state("XLSTM", state, x.shape[0], ("0.conv",))
        if starts is not None and not bool(starts.any()):
            starts = None
        if valid is not None and bool(valid.all()):
            valid = None
        new_state: State = {}
        h = x
        for i, block in enumerate(self.blocks):
            prefix = f"{i}."
            block_state = {k[len(prefix) :]: t for k, t in state.items() if k.startswith(prefix)}
            h, block_state = block(h, block_state, valid, starts, parallel)
            new_state.update({prefix + key: t for key, t in block_state.items()})
        return self.ln_final(h), new_state
