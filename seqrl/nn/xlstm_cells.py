"""The xLSTM cell mathematics, kept apart from the blocks in `xlstm.py` so both fit on a screen.

- `mlstm_parallel` / `mlstm_recurrent`: the two forms of the stabilized mLSTM (Beck et al., 2024,
  section 2.3 and appendix A.3). The parallel form here extends the paper's by one column for the
  incoming state (C0, n0, m0), so a chunk continues any state, and by segment masks for episode
  starts and padding; with a zero incoming state it is the paper's form with m0 = 0.
- `CausalConv1d`: the depth-wise causal convolution of the xLSTM blocks, with a state of the last
  K-1 inputs, skipping padded tokens and not reaching across episode starts.
- `HeadwiseNorm`: layer norm per head (the paper's group norm over heads).

Shapes: B batch, H heads, T tokens, Dh head width, C channels, K kernel length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqrl.nn.base import segment_ids

EPS = 1e-6  # added to the mLSTM normalizer, as in the official implementation

MLSTMCell = tuple[Tensor, Tensor, Tensor]  # C (B, H, Dh, Dh), n (B, H, Dh), m (B, H)


def mlstm_parallel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    i_pre: Tensor,
    f_pre: Tensor,
    cell: MLSTMCell,
    valid: Tensor | None = None,
    starts: Tensor | None = None,
) -> tuple[Tensor, MLSTMCell]:
    """Parallel mLSTM over a chunk. q, k, v: (B, H, T, Dh) (k already scaled by 1/sqrt(Dh));
    i_pre, f_pre: (B, H, T) gate pre-activations; valid, starts: (B, T) bool or None.

    Returns h~ (B, H, T, Dh) and the cell after the chunk. With L_t = sum_{s<=t} log f_s:
    log D_tj = L_t - L_j + i~_j for j <= t in t's episode; the incoming state is one more column
    with weight L_t - L_(episode start - 1) + m0 (m0 = 0 after an episode start, where the state
    is zero). m_t is the row max, equal to the recurrent stabilizer.
    """
    C0, n0, m0 = cell
    batch, heads, length, _ = q.shape
    log_f = F.logsigmoid(f_pre)  # (B, H, T)
    if valid is not None:  # a padded token neither decays nor writes the memory
        log_f = log_f.masked_fill(~valid[:, None], 0.0)
    cumulative = log_f.cumsum(-1)  # (B, H, T) L_t
    allowed = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()[None, None]
    first = torch.ones(batch, 1, length, dtype=torch.bool, device=q.device)  # (B, 1, T)
    base = torch.zeros_like(cumulative)
    if starts is not None:
        seg = segment_ids(starts)  # (B, T)
        allowed = allowed & (seg[:, :, None] == seg[:, None, :])[:, None]
        first = (seg == 0)[:, None]
        steps = torch.arange(length, device=q.device)
        episode_begin = torch.where(starts, steps, 0).cummax(1).values  # (B, T)
        exclusive = cumulative - log_f  # L_(t-1)
        base = exclusive.gather(-1, episode_begin[:, None].expand(-1, heads, -1))
    if valid is not None:
        allowed = allowed & valid[:, None, None, :]
    log_d = cumulative[..., :, None] - cumulative[..., None, :] + i_pre[..., None, :]  # (B,H,T,T)
    log_d = log_d.masked_fill(~allowed, float("-inf"))
    state_weight = cumulative - base + torch.where(first, m0[..., None], 0.0)  # (B, H, T)
    m = torch.maximum(log_d.amax(-1), state_weight)  # (B, H, T) never -inf
    decay = torch.exp(log_d - m[..., None])  # (B, H, T, T)
    from_state = torch.exp(state_weight - m) * first  # (B, H, T)
    scores = (q @ k.transpose(-2, -1)) * decay  # (B, H, T, T)
    numerator = scores @ v + from_state[..., None] * torch.einsum("bhvk,bhtk->bhtv", C0, q)
    denominator = scores.sum(-1) + from_state * torch.einsum("bhk,bhtk->bht", n0, q)
    h = numerator / (torch.maximum(denominator.abs(), torch.exp(-m)) + EPS)[..., None]
    last, last_state = decay[..., -1, :], from_state[..., -1]  # (B, H, T), (B, H)
    C = torch.einsum("bht,bhtv,bhtk->bhvk", last, v, k) + last_state[..., None, None] * C0
    n = torch.einsum("bht,bhtk->bhk", last, k) + last_state[..., None] * n0
    return h, (C, n, m[..., -1])


def mlstm_recurrent(
    q: Tensor, k: Tensor, v: Tensor, i_pre: Tensor, f_pre: Tensor, cell: MLSTMCell
) -> tuple[Tensor, MLSTMCell]:
    """Recurrent mLSTM, one token at a time; same arguments and results as `mlstm_parallel`
    without padding or episode starts (reset the state between episodes instead)."""
    C, n, m = cell
    outputs = []
    for t in range(q.shape[2]):
        q_t, k_t, v_t = q[:, :, t], k[:, :, t], v[:, :, t]  # (B, H, Dh)
        log_f = F.logsigmoid(f_pre[..., t])  # (B, H)
        m_new = torch.maximum(log_f + m, i_pre[..., t])
        f_gate = torch.exp(log_f + m - m_new)[..., None]  # (B, H, 1)
        i_gate = torch.exp(i_pre[..., t] - m_new)[..., None]
        C = _rank_one_update(C, f_gate, i_gate * v_t, k_t)  # f' C + i' v k^T
        n = f_gate * n + i_gate * k_t
        numerator = (C * q_t[..., None, :]).sum(-1)  # (B, H, Dh); beats bmm for mat-vec on CPU
        denominator = (n * q_t).sum(-1).abs()  # (B, H)
        outputs.append(numerator / (torch.maximum(denominator, torch.exp(-m_new)) + EPS)[..., None])
        m = m_new
    return torch.stack(outputs, 2), (C, n, m)  # (B, H, T, Dh)


def _rank_one_update(C: Tensor, scale: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """scale * C + left right^T as one scaled copy and one in-place batched rank-1 update.

    C: (B, H, Dv, Dk), scale: (B, H, 1), left: (B, H, Dv), right: (B, H, Dk).
    """
    if torch.jit.is_tracing():  # an in-place update of a view is lost in ONNX export
        return scale[..., None] * C + left[..., :, None] * right[..., None, :]
    value_width, key_width = C.shape[-2:]
    out = scale[..., None] * C  # a new tensor, so the in-place update below is safe
    out.view(-1, value_width, key_width).baddbmm_(
        left.reshape(-1, value_width, 1), right.reshape(-1, 1, key_width)
    )
    return out


class CausalConv1d(nn.Module):
    """Depth-wise causal convolution y_t = b + sum_k w_k * x_(t-k), k = 0..K-1, over real tokens.

    State: the last K-1 real inputs of the current episode (B, K-1, C), zeros when fewer.
    """

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.randn(channels, kernel) / kernel**0.5)  # (C, K)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(
        self, x: Tensor, state: Tensor, valid: Tensor | None, starts: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """x (B, T, C), state (B, K-1, C) -> y (B, T, C), new state (B, K-1, C)."""
        lag = self.kernel - 1
        stream = torch.cat([state, x], 1)  # (B, K-1+T, C)
        if valid is None and starts is None:
            y = F.conv1d(stream.transpose(1, 2), self.weight[:, None], self.bias, groups=x.shape[2])
            return y.transpose(1, 2), stream[:, stream.shape[1] - lag :]
        return self._masked(x, stream, valid, starts)

    def _masked(
        self, x: Tensor, stream: Tensor, valid: Tensor | None, starts: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        # Index the real tokens in order ("compact" index c), map c back to the stream, and take
        # the k-th previous real token of each token, dropped when it lies in another episode.
        batch, length, channels = x.shape
        lag, device = self.kernel - 1, x.device
        if valid is None:
            valid = torch.ones(batch, length, dtype=torch.bool, device=device)
        seg = (
            segment_ids(starts) if starts is not None else torch.zeros_like(valid, dtype=torch.long)
        )
        compact = valid.long().cumsum(1) - 1  # (B, T) index among real tokens
        steps = torch.arange(length, device=device).expand(batch, length)
        to_time = torch.zeros(batch, length + 1, dtype=torch.long, device=device)
        to_time.scatter_(1, torch.where(valid, compact, length), steps)  # slot T is discarded
        # Stream index of "compact index c" where the state's entries are c = -(K-1)..-1.
        to_stream = torch.cat(
            [torch.arange(lag, device=device).expand(batch, lag), lag + to_time[:, :length]], 1
        )  # (B, K-1+T)
        stream_seg = torch.cat([seg.new_zeros(batch, lag), seg], 1)  # the state is episode 0

        def previous(index: Tensor, episode: Tensor) -> Tensor:
            where = to_stream.gather(1, index)  # (B, N)
            values = stream.gather(1, where[..., None].expand(-1, -1, channels))
            return values * (stream_seg.gather(1, where) == episode)[..., None]

        y = self.bias + self.weight[:, lag] * x
        for back in range(1, self.kernel):
            y = y + self.weight[:, lag - back] * previous((compact + lag - back).clamp(min=0), seg)
        count = valid.long().sum(1, keepdim=True)  # (B, 1)
        last = count + torch.arange(lag, device=device)  # (B, K-1) the last K-1 real entries
        return y, previous(last, seg[:, -1:])


class HeadwiseNorm(nn.Module):
    """Layer norm over each head's features separately, with a learnable scale."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        grouped = x.view(*shape[:-1], self.heads, -1)  # (..., H, Dh)
        head_width = self.weight.shape[0] // self.heads  # an int, also while tracing
        return F.layer_norm(grouped, (head_width,)).view(shape) * self.weight
