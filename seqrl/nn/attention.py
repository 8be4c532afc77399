"""Attention with masks, and the preallocated key/value cache used for rollouts.

- `attention`: one entry point over `torch.nn.functional.scaled_dot_product_attention` (SDPA)
  with a boolean "allowed" mask (causal, banded, padding, episode boundaries all compose into it)
  and an optional additive float bias (GTrXL's relative positions). A query row with no allowed
  key returns zeros, never NaN. `backend="math"` is a plain softmax(QK^T)V written out, kept as
  the reference the fused paths are tested against.
- Mask builders: `causal_mask`, `banded_causal_mask` (a sliding window of W tokens: each token
  sees itself and the W-1 tokens before it) and `attention_mask`, the general form over token
  positions, episode segments and padding.
- KV cache helpers: the cache has a fixed shape (B, H, S, Dh) per layer (SDPA's layout), S = `max_len` for full
  causal attention or S = W for a sliding window, where it is a ring buffer: the token at
  in-episode position p lives in slot p mod W. Step shapes therefore never change, which keeps
  CUDA graphs and compiled steps valid over a whole episode.
- `cache_attention`: the few queries of a rollout step (DT: 3 tokens, 1 in the last layer) over
  a KV cache, written out as two batched matmuls and a softmax. SDPA's CPU kernel is tuned for
  long query blocks: for DT's 3 queries x 41 keys x 100 envs it took 0.98 ms per layer with its
  mask handling, against 0.67 ms for this (one thread, inside a DT `act`).
- `flash_attn_kvcache`: on CUDA with half precision and the `flash-attn` package installed, the
  fused "append to cache and attend" kernel for full-causal caches. Ring buffers never use it
  (the kernel has no notion of a ring).
"""

from __future__ import annotations

import importlib.util
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Backend = Literal["auto", "sdpa", "math", "flash"]
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "math", "flash")


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    allowed: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    causal: bool = False,
    dropout_p: float = 0.0,
    backend: Backend = "sdpa",
) -> Tensor:
    """Scaled dot-product attention. q: (B, H, Tq, Dh), k and v: (B, H, Tk, Dh) -> (B, H, Tq, Dh).

    allowed: bool, broadcastable to (B, H, Tq, Tk), True where query i may attend to key j.
    bias: float, broadcastable to (B, H, Tq, Tk), added to the scaled scores.
    causal: only without `allowed`/`bias`; query i sees keys j <= i (Tq == Tk).
    backend: "sdpa" (fused kernels when available) or "math" (the reference); "auto" = "sdpa".
    """
    if backend not in ("auto", "sdpa", "math"):
        raise ValueError(f"attention backend must be 'auto', 'sdpa' or 'math'; got {backend!r}.")
    if causal and (allowed is not None or bias is not None):
        raise ValueError("attention: pass either causal=True or an explicit mask, not both.")
    if causal and backend == "math":
        allowed, causal = causal_mask(q.shape[-2], q.device), False
    has_key = None
    if allowed is not None:
        has_key = allowed.any(-1, keepdim=True)  # (B, 1|H, Tq, 1)
        # A row with nothing to attend to would be softmax over -inf: let it see everything and
        # zero its output afterwards, so no backend ever produces NaN.
        allowed = allowed | ~has_key
    if bias is not None and allowed is not None:
        attn_mask: Tensor | None = bias.masked_fill(~allowed, float("-inf"))
    else:
        attn_mask = bias if bias is not None else allowed
    if backend == "math":
        out = _math_attention(q, k, v, attn_mask, dropout_p)
    else:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=causal
        )
    if has_key is not None:
        out = out.masked_fill(~has_key, 0.0)
    return out


def _math_attention(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, dropout_p: float
) -> Tensor:
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        scores = scores + attn_mask
    weights = scores.softmax(-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v  # (B, H, Tq, Dh)


FEW_QUERIES = 4
"""`cache_attention` serves steps of at most this many query tokens; longer chunks use SDPA."""


def cache_attention(q: Tensor, keys: Tensor, values: Tensor, allowed: Tensor) -> Tensor:
    """Few queries over a KV cache: q (B, H, Tq, Dh), keys and values (B, H, S, Dh) (a slice
    along S of the cache is fine: no copy), allowed bool (B, 1, Tq, S) -> (B, H, Tq, Dh).

    Inference only (no dropout). Every query row must allow at least one key (a step's query
    always sees its own token, written before attending); `attention` handles empty rows.
    """
    batch, heads, length, head_width = q.shape
    size = keys.shape[2]
    bias = torch.where(allowed, 0.0, float("-inf")).to(q.dtype)  # (B, 1, Tq, S)
    scores = torch.baddbmm(
        bias.expand(batch, heads, length, size).reshape(batch * heads, length, size),
        q.reshape(batch * heads, length, head_width),
        keys.reshape(batch * heads, size, head_width).transpose(1, 2),
        alpha=1.0 / math.sqrt(head_width),
    )  # (B*H, Tq, S)
    out = torch.bmm(scores.softmax(-1), values.reshape(batch * heads, size, head_width))
    return out.view(batch, heads, length, head_width)


class Dropout(nn.Module):
    """`nn.Dropout` with the same distribution (keep each element with probability 1 - p, scale
    by 1 / (1 - p)), drawn as one float32 uniform per element and a comparison: on CPU that is
    about 2x faster than `bernoulli_`, which was a tenth of a DT training step."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1); got {p}.")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * torch.where(keep, 1.0 / (1.0 - self.p), 0.0).to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def causal_mask(length: int, device: torch.device | str | None = None) -> Tensor:
    """(T, T) bool: query i may attend to keys j <= i."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def banded_causal_mask(
    length: int, window: int, device: torch.device | str | None = None
) -> Tensor:
    """(T, T) bool: query i may attend to keys i-W < j <= i (itself and the W-1 before it)."""
    if window < 1:
        raise ValueError(f"window must be >= 1; got {window}.")
    offsets = torch.arange(length, device=device)
    distance = offsets[:, None] - offsets[None, :]  # (T, T) i - j
    return (distance >= 0) & (distance < window)


def attention_mask(
    query_pos: Tensor,
    key_pos: Tensor,
    query_seg: Tensor,
    key_seg: Tensor,
    key_valid: Tensor,
    query_index: Tensor,
    key_index: Tensor,
    window: int | None,
) -> Tensor:
    """(B, 1, Tq, Tk) bool mask from per-token bookkeeping.

    *_pos (B, T*): in-episode positions of real tokens; *_seg (B, T*): episode segment ids;
    key_valid (B, Tk): real (not padding, not an empty cache slot); *_index (T*,): order in the
    stream, so even a padded query never sees a later key. Allowed: same segment, key real,
    key not later, and (with a window) query_pos - key_pos < window.
    """
    distance = query_pos[:, :, None] - key_pos[:, None, :]  # (B, Tq, Tk)
    allowed = (query_seg[:, :, None] == key_seg[:, None, :]) & key_valid[:, None, :]
    allowed = allowed & (distance >= 0) & (key_index[None, None, :] <= query_index[None, :, None])
    if window is not None:
        allowed = allowed & (distance < window)
    return allowed[:, None]  # (B, 1, Tq, Tk)


def cache_slot_positions(position: Tensor, size: int, ring: bool) -> Tensor:
    """(B, S) long: the in-episode position held by each cache slot, -1 for an empty slot.

    position (B,): tokens already written this episode. Full cache: slot s holds position s.
    Ring of W = S slots: slot s holds the latest position p < position with p = s mod W.
    """
    slots = torch.arange(size, device=position.device)  # (S,)
    last = position[:, None] - 1  # (B, 1)
    if ring:
        held = last - torch.remainder(last - slots[None, :], size)  # (B, S)
    else:
        held = slots[None, :].expand(position.shape[0], size)
    return torch.where(held <= last, held, -1).clamp(min=-1)


def write_cache_(cache: Tensor, values: Tensor, positions: Tensor, ring: bool) -> None:
    """Write values (B, n, H, Dh) at in-episode positions (B, n) into cache (B, H, S, Dh), in place.

    All n tokens of every row are written; for a ring, pass at most S tokens per row (several
    writes to one slot in a single call have no defined order on GPUs).
    """
    size = cache.shape[2]
    slots = torch.remainder(positions, size) if ring else positions  # (B, n)
    if torch.jit.is_tracing():  # ONNX cannot export the indexed write below
        scatter_cache_(cache, values, slots)
        return
    rows = torch.arange(cache.shape[0], device=cache.device)[:, None].expand_as(slots)
    cache[rows, :, slots] = values.detach().to(cache.dtype)  # indexed view: (B, n, H, Dh)


def scatter_cache_(cache: Tensor, values: Tensor, slots: Tensor) -> None:
    """`write_cache_` as one `scatter_` into slots (B, n): what the ONNX exporter can express
    (used while tracing; in eager mode the indexed write is about 2x faster on CPU)."""
    heads, head_width = cache.shape[1], cache.shape[3]
    index = slots[:, None, :, None].expand(-1, heads, -1, head_width)  # (B, H, n, Dh)
    cache.scatter_(2, index, values.detach().to(cache.dtype).transpose(1, 2))


def write_cache_selected_(
    cache: Tensor, values: Tensor, positions: Tensor, selected: Tensor, ring: bool
) -> None:
    """Like `write_cache_`, for the tokens where `selected` (B, T) is True (unique slots)."""
    rows, steps = selected.nonzero(as_tuple=True)
    slots = positions[rows, steps]
    if ring:
        slots = torch.remainder(slots, cache.shape[2])
    cache[rows, :, slots] = values[rows, steps].detach().to(cache.dtype)  # (N, H, Dh)


def flash_attn_available() -> bool:
    """True when the `flash-attn` package is importable (its kernels need CUDA)."""
    return importlib.util.find_spec("flash_attn") is not None


def can_use_flash_kvcache(q: Tensor, ring: bool) -> bool:
    """The flash-attn KV-cache kernel applies: CUDA, fp16/bf16, full cache, package installed."""
    return (
        q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and not ring
        and flash_attn_available()
    )


def flash_attn_kvcache(
    q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, position: Tensor
) -> Tensor:
    """Append k, v (B, n, H, Dh) at `position` (B,) to the caches (B, S, H, Dh) (strided views
    are fine: the kernel only needs a contiguous last dimension), in place, and
    attend causally from q (B, n, H, Dh) over each row's first position + n slots.

    Returns (B, n, H, Dh). The caller advances `position` by n afterwards.
    """
    from flash_attn import flash_attn_with_kvcache  # optional dependency, CUDA only

    return flash_attn_with_kvcache(
        q,
        k_cache,
        v_cache,
        k=k,
        v=v,
        cache_seqlens=position.to(torch.int32),
        causal=True,
    )
