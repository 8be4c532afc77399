"""GPT backbone: pre-LayerNorm causal transformer blocks with a fixed-shape KV cache.

Follows GPT-2 (Radford et al., 2019) as used by the Decision Transformer (Chen et al., 2021):
pre-LayerNorm blocks (x + attn(LN(x)), x + mlp(LN(x))), a final LayerNorm, GPT-2 initialisation.
What differs:
- No positional embedding inside the backbone, as in the official Decision Transformer's modified
  GPT-2: callers add timestep embeddings to the tokens.
- `window=W` gives a sliding (banded) causal window in training *and* stepping: every token at
  every layer attends to itself and the W-1 real tokens before it in its episode. Trained that
  way, the ring-buffered KV cache computes exactly the training function on arbitrarily long
  episodes. `window=None` is full causal attention over up to `max_len` tokens per episode.
- Padding (`mask`) and episode starts (`episode_start`) are part of the attention mask, so a
  parallel forward over a chunk that spans episode ends equals stepping with `reset_state`.

State: {"pos": (B,) tokens written this episode, "k.l"/"v.l": (B, H, S, Dh) per layer l}, with
S = max_len (full) or S = W (ring buffer). `step` writes into the cache in place (it is an
inference path: no gradient flows through the cache); `forward` never modifies its `state`
argument and returns a fresh, detached state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqrl.nn.attention import (
    BACKENDS,
    attention,
    attention_mask,
    banded_causal_mask,
    cache_slot_positions,
    can_use_flash_kvcache,
    flash_attn_kvcache,
    write_cache_,
    write_cache_selected_,
)
from seqrl.nn.base import (
    ACTIVATIONS,
    State,
    as_done,
    check_inputs,
    check_state,
    segment_ids,
    token_positions,
    zero_rows,
)


@dataclass
class GPTConfig:
    width: int = 128
    """D: token width (inputs and outputs)."""
    layers: int = 3
    """Number of transformer blocks."""
    heads: int = 1
    """Attention heads; must divide `width`."""
    dropout: float = 0.0
    """Dropout on attention weights and residual branches (inactive in eval())."""
    activation: str = "gelu"
    """MLP activation: one of gelu, gelu_tanh, relu, silu, tanh."""
    window: int | None = None
    """W: each token attends to itself and the W-1 previous tokens; None = full causal."""
    max_len: int = 1024
    """Longest episode (in tokens) the full-causal cache holds; unused with a window."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of `width`."""
    backend: str = "auto"
    """auto (flash-attn KV-cache kernel when usable, else SDPA), sdpa, math, or flash."""

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"GPT: width={self.width} must be divisible by heads={self.heads}.")
        if self.window is not None and self.window < 1:
            raise ValueError(f"GPT: window must be None or >= 1; got {self.window}.")
        if self.max_len < 1:
            raise ValueError(f"GPT: max_len must be >= 1; got {self.max_len}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"GPT: activation must be one of {sorted(ACTIVATIONS)}; got {self.activation!r}."
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"GPT: backend must be one of {BACKENDS}; got {self.backend!r}.")


@dataclass
class _Plan:
    """Per-call bookkeeping shared by all layers."""

    allowed: Tensor | None  # (B, 1, T, S + T), (B, 1, T, S), (T, T) or None
    causal: bool  # SDPA's is_causal fast path (no mask tensor at all)
    read_cache: bool  # attend over [cache, new tokens] (then write)
    write_first: bool  # write the new tokens, then attend over the cache alone (no copy)
    positions: Tensor  # (B, T) in-episode positions
    start: Tensor  # (B,) positions already in the cache
    end: Tensor  # (B,) positions in the cache after this chunk
    write: bool
    write_from: int  # fast path: write tokens [write_from:] of every row
    selected: Tensor | None  # general path: (B, T) tokens to write
    clear: Tensor | None  # (B,) rows whose cache is cleared (episode start inside the chunk)
    flash: bool


class GPTBlock(nn.Module):
    """x + attn(LN(x)); x + mlp(LN(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        width, self.heads = config.width, config.heads
        self.dropout, self.backend, self.ring = (
            config.dropout,
            config.backend,
            config.window is not None,
        )
        self.ln_attn = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln_mlp = nn.LayerNorm(width)
        hidden = config.mlp_ratio * width
        self.mlp_in = nn.Linear(width, hidden)
        self.activation = ACTIVATIONS[config.activation]()
        self.mlp_out = nn.Linear(hidden, width)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, h: Tensor, plan: _Plan, cache_k: Tensor | None, cache_v: Tensor | None
    ) -> Tensor:
        batch, length, width = h.shape
        q, k, v = self.qkv(self.ln_attn(h)).view(batch, length, 3, self.heads, -1).unbind(2)
        # q, k, v: (B, T, H, Dh)
        if cache_k is None or cache_v is None:
            out = self._attend(q, k.transpose(1, 2), v.transpose(1, 2), plan)
        else:
            out = self._attend_with_cache(q, k, v, plan, cache_k, cache_v)
        h = h + self.resid_dropout(self.proj(out.reshape(batch, length, width)))
        mlp = self.mlp_out(self.activation(self.mlp_in(self.ln_mlp(h))))
        return h + self.resid_dropout(mlp)

    def _attend(self, q: Tensor, keys: Tensor, values: Tensor, plan: _Plan) -> Tensor:
        """q (B, T, H, Dh), keys and values (B, H, S, Dh) -> (B, T, H, Dh)."""
        backend = "sdpa" if self.backend in ("auto", "flash") else self.backend
        return attention(
            q.transpose(1, 2),
            keys,
            values,
            plan.allowed,
            causal=plan.causal,
            dropout_p=self.dropout if self.training else 0.0,
            backend=backend,  # type: ignore[arg-type]
        ).transpose(1, 2)

    def _attend_with_cache(
        self, q: Tensor, k: Tensor, v: Tensor, plan: _Plan, cache_k: Tensor, cache_v: Tensor
    ) -> Tensor:
        if plan.flash:
            # flash-attn wants (B, S, H, Dh): hand it strided views of the (B, H, S, Dh) cache.
            return flash_attn_kvcache(
                q, k, v, cache_k.transpose(1, 2), cache_v.transpose(1, 2), plan.start
            )
        if plan.write_first:
            self._write(plan, cache_k, cache_v, k, v)
            return self._attend(q, cache_k, cache_v, plan)
        keys, values = k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, Dh)
        if plan.read_cache:
            keys = torch.cat([cache_k, keys], 2)  # (B, H, S + T, Dh)
            values = torch.cat([cache_v, values], 2)
        out = self._attend(q, keys, values, plan)
        if plan.write:
            self._write(plan, cache_k, cache_v, k, v)
        return out

    def _write(self, plan: _Plan, cache_k: Tensor, cache_v: Tensor, k: Tensor, v: Tensor) -> None:
        if plan.clear is not None:
            rows = plan.clear[:, None, None, None]
            cache_k.masked_fill_(rows, 0.0)
            cache_v.masked_fill_(rows, 0.0)
        if plan.selected is not None:
            write_cache_selected_(cache_k, k, plan.positions, plan.selected, self.ring)
            write_cache_selected_(cache_v, v, plan.positions, plan.selected, self.ring)
        else:
            positions = plan.positions[:, plan.write_from :]
            write_cache_(cache_k, k[:, plan.write_from :], positions, self.ring)
            write_cache_(cache_v, v[:, plan.write_from :], positions, self.ring)


class GPT(nn.Module):
    """Pre-LN causal transformer over (B, T, D) tokens; see the module docstring."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.width = config.width
        self.cache_size = config.window if config.window is not None else config.max_len
        self.blocks = nn.ModuleList(GPTBlock(config) for _ in range(config.layers))
        self.ln_final = nn.LayerNorm(config.width)
        self.apply(self._init_weights)
        blocks = [block for block in self.modules() if isinstance(block, GPTBlock)]
        for block in blocks:  # GPT-2: scale the residual projections by depth
            for proj in (block.proj, block.mlp_out):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * config.layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """An empty cache: {"pos": (B,), "k.l"/"v.l": (B, H, S, Dh)}."""
        param = self.ln_final.weight
        device = param.device if device is None else device
        heads = self.config.heads
        shape = (batch_size, heads, self.cache_size, self.width // heads)
        state = {"pos": torch.zeros(batch_size, dtype=torch.long, device=device)}
        for layer in range(self.config.layers):
            state[f"k.{layer}"] = torch.zeros(shape, dtype=param.dtype, device=device)
            state[f"v.{layer}"] = torch.zeros(shape, dtype=param.dtype, device=device)
        return state

    def reset_state(self, state: State, done: Tensor) -> State:
        """Clear the cache rows where done (B,) is True, in place; returns `state`."""
        done = as_done(done, state["pos"].shape[0], state["pos"].device)
        zero_rows(state, done, in_place=True)
        return state

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

        `state` (not modified) is the cache to continue from; `return_state=False` skips
        building the returned cache (cheaper in training; the second output is then None).
        """
        check_inputs("GPT", x, self.width, mask, episode_start)
        if state is None:
            read_cache = False
            cache = self.initial_state(x.shape[0], x.device) if return_state else None
        else:
            check_state("GPT", state, x.shape[0], ("pos", "k.0", "v.0"))
            read_cache = True
            cache = {key: t.clone() for key, t in state.items()} if return_state else state
        start = cache["pos"] if cache is not None else x.new_zeros(x.shape[0], dtype=torch.long)
        plan = self._plan(x, start, mask, episode_start, read_cache, return_state, flash=False)
        y = self._run(x, plan, cache)
        if cache is not None and return_state:
            cache["pos"] = plan.end
        return y, cache if return_state else None

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, n, D) -> y (B, n, D): append n tokens to the cache (in place) and attend."""
        check_inputs("GPT", x, self.width, None, None)
        check_state("GPT", state, x.shape[0], ("pos", "k.0", "v.0"))
        flash = self.config.backend in ("auto", "flash") and can_use_flash_kvcache(
            x, self.config.window is not None
        )
        if self.config.backend == "flash" and not flash:
            raise ValueError(
                "GPT: backend='flash' needs CUDA, float16/bfloat16, window=None and the flash-attn "
                "package; use backend='auto' to fall back to SDPA."
            )
        start = state["pos"]
        plan = self._plan(x, start, None, None, True, True, flash=flash)
        y = self._run(x, plan, state)
        state["pos"].add_(x.shape[1])
        return y, state

    def _run(self, x: Tensor, plan: _Plan, cache: State | None) -> Tensor:
        h = x
        for layer, block in enumerate(self.blocks):
            if cache is None:
                h = block(h, plan, None, None)
            else:
                h = block(h, plan, cache[f"k.{layer}"], cache[f"v.{layer}"])
        return self.ln_final(h)

    def _plan(
        self,
        x: Tensor,
        start: Tensor,
        mask: Tensor | None,
        episode_start: Tensor | None,
        read_cache: bool,
        write: bool,
        flash: bool,
    ) -> _Plan:
        batch, length, _ = x.shape
        device, window, size = x.device, self.config.window, self.cache_size
        ring = window is not None
        steps = torch.arange(length, device=device)
        simple = mask is None and episode_start is None
        if simple:
            positions = start[:, None] + steps  # (B, T)
            end = start + length
            valid = torch.ones(batch, length, dtype=torch.bool, device=device)
            seg = torch.zeros(batch, length, dtype=torch.long, device=device)
        else:
            valid = mask if mask is not None else torch.ones_like(episode_start)  # type: ignore[arg-type]
            starts = episode_start if episode_start is not None else torch.zeros_like(valid)
            seg = segment_ids(starts)
            positions = token_positions(valid, starts, start)
            end = _episode_end(positions, valid, seg)
            end = torch.where(seg[:, -1] > 0, end, torch.maximum(end, start))
        if not ring and write and bool((end > size).any()):
            raise ValueError(
                f"GPT: an episode reached {int(end.max())} tokens but max_len={size} with "
                "window=None. Raise max_len, use a sliding window (window=W), or call "
                "reset_state at episode ends."
            )
        allowed, causal = None, False
        # Appending first is exact unless the new tokens overwrite ring slots that earlier new
        # tokens still need (n > 1 with a ring); it saves copying the cache at every step.
        write_first = read_cache and simple and write and not flash and (not ring or length == 1)
        if flash:
            pass
        elif write_first:
            held = cache_slot_positions(end, size, ring)[:, None, :]  # (B, 1, S) after writing
            allowed = (held >= 0) & (held <= positions[:, :, None])  # (B, T, S)
            if ring:
                allowed = allowed & (positions[:, :, None] - held < size)
            allowed = allowed[:, None]  # (B, 1, T, S)
        elif not read_cache and simple:
            if window is not None:
                allowed = banded_causal_mask(length, window, device)  # (T, T)
            else:
                causal = True
        else:
            allowed = attention_mask(positions, positions, seg, seg, valid, steps, steps, window)
            if read_cache:
                held = cache_slot_positions(start, size, ring)  # (B, S)
                zeros = torch.zeros_like(held)
                cache_index = torch.full((size,), -1, device=device)
                from_cache = attention_mask(
                    positions, held, seg, zeros, held >= 0, steps, cache_index, window
                )
                allowed = torch.cat([from_cache, allowed], -1)  # (B, 1, T, S + T)
        selected, clear, write_from = None, None, 0
        if write and simple:
            write_from = max(0, length - size) if ring else 0
        elif write:
            in_last = seg == seg[:, -1:]
            selected = valid & in_last & (positions >= end[:, None] - size)
            clear = seg[:, -1] > 0
        return _Plan(
            allowed,
            causal,
            read_cache,
            write_first,
            positions,
            start,
            end,
            write,
            write_from,
            selected,
            clear,
            flash,
        )


def _episode_end(positions: Tensor, valid: Tensor, seg: Tensor) -> Tensor:
    """(B,) tokens of the last episode in the chunk, counting the incoming cache for segment 0."""
    in_last = valid & (seg == seg[:, -1:])
    return torch.where(in_last, positions + 1, 0).amax(1)
