"""GPT backbone: pre-LayerNorm causal transformer blocks with a fixed-shape KV cache.

Follows GPT-2 (Radford et al., 2019) as used by the Decision Transformer (Chen et al., 2021):
pre-LayerNorm blocks (x + attn(LN(x)), x + mlp(LN(x))), a final LayerNorm, GPT-2 initialisation.
What differs:
- No positional embedding inside the backbone, as in the official Decision Transformer's modified
  GPT-2: callers add timestep embeddings to the tokens.
- `window=W` gives a sliding (banded) causal window in training *and* stepping: every token at
  every layer attends to itself and the W-1 real tokens before it in its episode. With L layers
  an output depends on up to L*(W-1) tokens back, so a model trained on T-token sequences
  computes its training function in a ring-buffered cache only where L*(W-1) <= T-1 for the
  outputs its loss reads (see `seqrl.agents.dt`). `window=None` is full causal attention over up
  to `max_len` tokens per episode.
- Padding (`mask`) and episode starts (`episode_start`) are part of the attention mask, so a
  parallel forward over a chunk that spans episode ends equals stepping with `reset_state`.
- `select` (forward and step): the last block computes its queries, projection and MLP only for
  the selected tokens (keys and values for all, the cache needs them): a caller whose loss reads
  every third token pays for a third of the last block's token-wise work.

State: {"pos": (B,) tokens written this episode, "k.l"/"v.l": (B, H, S, Dh) per layer l}, with
S = max_len (full) or S = W + step_tokens - 1 (ring buffer). `step` writes into the cache in
place (an inference path: no gradient flows through the cache); `forward` never modifies its
`state` argument and returns a fresh, detached state.

How one step of n new tokens attends, for a ring with W = 4, n = 2, S = W + 1 = 5 slots:

```
  positions held after writing p and p+1 first ("append", no copy of the cache):
     slot:      0     1     2     3     4
     holds:   p-3   p-2   p-1    p    p+1      (slot = position mod S)
  query p   :   x     x     x     x     .      p - held < W and held <= p
  query p+1 :   .     x     x     x     x
```

With S = W (no spare slots) writing p+1 first would overwrite p-3, which query p still reads, so
a step of more than `step_tokens` tokens falls back to attending over [cache, new tokens]
("concat") and writing afterwards. A full-causal cache attends over its filled prefix only.
A step of at most `FEW_QUERIES` tokens (backend "auto", no dropout) attends with
`cache_attention`, two batched matmuls, rather than SDPA's CPU kernel (tuned for long blocks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqrl.nn.attention import (
    BACKENDS,
    FEW_QUERIES,
    Dropout,
    attention,
    attention_mask,
    banded_causal_mask,
    cache_attention,
    cache_slot_positions,
    can_use_flash_kvcache,
    causal_mask,
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

Select = slice | Tensor | None
"""Token indices (along T) whose last-block outputs are computed; None = all."""


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
    step_tokens: int = 1
    """With a window: `step` calls of up to this many tokens append to the ring in place (it
    holds W + step_tokens - 1 slots); longer ones copy the cache once per layer. A caller that
    steps n tokens at a time (DT: 3 per env step) sets it to n."""

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"GPT: width={self.width} must be divisible by heads={self.heads}.")
        if self.window is not None and self.window < 1:
            raise ValueError(f"GPT: window must be None or >= 1; got {self.window}.")
        if self.max_len < 1:
            raise ValueError(f"GPT: max_len must be >= 1; got {self.max_len}.")
        if self.step_tokens < 1:
            raise ValueError(f"GPT: step_tokens must be >= 1; got {self.step_tokens}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"GPT: activation must be one of {sorted(ACTIVATIONS)}; got {self.activation!r}."
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"GPT: backend must be one of {BACKENDS}; got {self.backend!r}.")


@dataclass
class _Plan:
    """Per-call bookkeeping shared by all layers (built by `GPT._plan`)."""

    mode: str
    """"fresh": no cache read; "append": write the new tokens, then attend over the cache's
    first `limit` slots; "concat": attend over [cache[:limit], new tokens], then write;
    "flash": flash-attn's append-and-attend kernel."""
    allowed: Tensor | None
    """Keys each query may read: (B, 1, T, S'), (T, T), or None with `causal`."""
    causal: bool = False
    """SDPA's is_causal fast path (no mask tensor at all)."""
    limit: int = 0
    """Cache slots read in "append" / "concat" mode (a full cache's filled prefix)."""
    positions: Tensor | None = None
    """(B, T) in-episode positions of the new tokens (None when nothing is written)."""
    start: Tensor | None = None
    """(B,) tokens already in the cache."""
    end: Tensor | None = None
    """(B,) tokens in the cache after this call."""
    write_from: int = 0
    """Plain chunks: write tokens [write_from:] of every row ..."""
    write_slots: Tensor | None = None
    """... into these cache slots (B, T - write_from)."""
    selected: Tensor | None = None
    """Chunks with padding or episode starts: (B, T) tokens to write."""
    clear: Tensor | None = None
    """(B,) rows whose cache is cleared first (an episode start inside the chunk)."""
    select: Select = None
    """The last block's output tokens."""
    select_allowed: Tensor | None = None
    """`allowed` restricted to the selected queries."""

    @property
    def write(self) -> bool:
        return self.positions is not None


class GPTBlock(nn.Module):
    """x + attn(LN(x)); x + mlp(LN(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        width, self.heads = config.width, config.heads
        self.dropout, self.backend = config.dropout, config.backend
        self.ring = config.window is not None
        self.ln_attn = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln_mlp = nn.LayerNorm(width)
        hidden = config.mlp_ratio * width
        self.mlp_in = nn.Linear(width, hidden)
        self.activation = ACTIVATIONS[config.activation]()
        self.mlp_out = nn.Linear(hidden, width)
        self.resid_dropout = Dropout(config.dropout)

    def forward(
        self,
        h: Tensor,
        plan: _Plan,
        cache_k: Tensor | None,
        cache_v: Tensor | None,
        last: bool = False,
    ) -> Tensor:
        """h (B, T, D) -> (B, T, D), or (B, T', D) for the selected tokens in the last block."""
        batch, length, width = h.shape
        normed = self.ln_attn(h)
        select = plan.select if last and plan.mode != "flash" else None
        if select is None:
            q, k, v = self.qkv(normed).view(batch, length, 3, self.heads, -1).unbind(2)
            allowed, causal = plan.allowed, plan.causal
        else:  # queries for the selected tokens only; keys and values for all of them
            w_q, w_kv = self.qkv.weight.split((width, 2 * width))
            b_q, b_kv = self.qkv.bias.split((width, 2 * width))
            h = h[:, select]
            q = F.linear(normed[:, select], w_q, b_q).view(batch, h.shape[1], self.heads, -1)
            k, v = F.linear(normed, w_kv, b_kv).view(batch, length, 2, self.heads, -1).unbind(2)
            allowed, causal = plan.select_allowed, False
        # q: (B, T', H, Dh); k, v: (B, T, H, Dh)
        if cache_k is None or cache_v is None:
            out = self._attend(q, k.transpose(1, 2), v.transpose(1, 2), allowed, causal)
        elif plan.mode == "fresh":  # a forward from an empty cache that it returns
            out = self._attend(q, k.transpose(1, 2), v.transpose(1, 2), allowed, causal)
            self._write(plan, cache_k, cache_v, k, v)
        else:
            out = self._attend_with_cache(q, k, v, plan, allowed, cache_k, cache_v)
        h = h + self.resid_dropout(self.proj(out.reshape(batch, h.shape[1], width)))
        mlp = self.mlp_out(self.activation(self.mlp_in(self.ln_mlp(h))))
        return h + self.resid_dropout(mlp)

    def _attend(
        self, q: Tensor, keys: Tensor, values: Tensor, allowed: Tensor | None, causal: bool
    ) -> Tensor:
        """q (B, T, H, Dh), keys and values (B, H, S, Dh) -> (B, T, H, Dh)."""
        backend = "sdpa" if self.backend in ("auto", "flash") else self.backend
        return attention(
            q.transpose(1, 2),
            keys,
            values,
            allowed,
            causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
            backend=backend,  # type: ignore[arg-type]
        ).transpose(1, 2)

    def _attend_with_cache(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        plan: _Plan,
        allowed: Tensor | None,
        cache_k: Tensor,
        cache_v: Tensor,
    ) -> Tensor:
        if plan.mode == "flash":
            # flash-attn wants (B, S, H, Dh): hand it strided views of the (B, H, S, Dh) cache.
            start = plan.start
            assert start is not None
            return flash_attn_kvcache(
                q, k, v, cache_k.transpose(1, 2), cache_v.transpose(1, 2), start
            )
        limit = plan.limit
        if plan.mode == "append":
            self._write(plan, cache_k, cache_v, k, v)
            keys, values = cache_k[:, :, :limit], cache_v[:, :, :limit]  # (B, H, S', Dh)
            if self._few_queries(q, allowed):  # a rollout step: written out, not SDPA
                return cache_attention(q.transpose(1, 2), keys, values, allowed).transpose(1, 2)
            return self._attend(q, keys, values, allowed, False)
        keys = torch.cat([cache_k[:, :, :limit], k.transpose(1, 2)], 2)  # (B, H, S' + T, Dh)
        values = torch.cat([cache_v[:, :, :limit], v.transpose(1, 2)], 2)
        out = self._attend(q, keys, values, allowed, False)
        if plan.write:
            self._write(plan, cache_k, cache_v, k, v)
        return out

    def _few_queries(self, q: Tensor, allowed: Tensor | None) -> bool:
        """`cache_attention` applies: a short step, no dropout, backend auto (not the reference)."""
        dropout = self.training and self.dropout > 0.0
        few = q.shape[1] <= FEW_QUERIES and allowed is not None
        return few and not dropout and self.backend == "auto" and not torch.jit.is_tracing()

    def _write(self, plan: _Plan, cache_k: Tensor, cache_v: Tensor, k: Tensor, v: Tensor) -> None:
        positions = plan.positions
        assert positions is not None
        if plan.clear is not None:
            rows = plan.clear[:, None, None, None]
            cache_k.masked_fill_(rows, 0.0)
            cache_v.masked_fill_(rows, 0.0)
        if plan.selected is not None:
            write_cache_selected_(cache_k, k, positions, plan.selected, self.ring)
            write_cache_selected_(cache_v, v, positions, plan.selected, self.ring)
        else:  # slots computed once per call, not per layer: positions mod S for a ring
            slots = plan.write_slots
            write_cache_(cache_k, k[:, plan.write_from :], slots, ring=False)
            write_cache_(cache_v, v[:, plan.write_from :], slots, ring=False)


class GPT(nn.Module):
    """Pre-LN causal transformer over (B, T, D) tokens; see the module docstring."""

    selects_tokens = True
    """`select=` computes the last block at the chosen tokens only (`seqrl.nn.base.selects`)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.width = config.width
        window = config.window
        self.cache_size = config.max_len if window is None else window + config.step_tokens - 1
        self.blocks = nn.ModuleList(GPTBlock(config) for _ in range(config.layers))
        self.ln_final = nn.LayerNorm(config.width)
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2: scale the residual projections by depth
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
        select: Select = None,
    ) -> tuple[Tensor, State | None]:
        """x (B, T, D) -> y (B, T, D) (or (B, T', D) for `select`) and the state after the last
        real token (detached).

        `state` (not modified) is the cache to continue from; `return_state=False` skips
        building the returned cache (cheaper in training; the second output is then None).
        """
        check_inputs("GPT", x, self.width, mask, episode_start)
        if state is None:
            cache = self.initial_state(x.shape[0], x.device) if return_state else None
        else:
            check_state("GPT", state, x.shape[0], ("pos", "k.0", "v.0"))
            cache = {key: t.clone() for key, t in state.items()} if return_state else state
        start = None if state is None else state["pos"]
        plan = self._plan(x, start, mask, episode_start, return_state, select, step=False)
        y = self._run(x, plan, cache if state is not None or return_state else None)
        if cache is not None and return_state:
            cache["pos"] = plan.end
        return y, cache if return_state else None

    def step(
        self, x: Tensor, state: State, *, select: Select = None, pad: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x (B, n, D) -> y (B, n, D) (or the `select`ed tokens): append n tokens to the cache
        (in place) and attend.

        `pad` (B,) long: the first pad[b] tokens of row b are padding, for a row whose episode
        starts inside the step (its cache must be empty): they take the negative positions
        -pad[b]..-1, which no query ever reads (a ring or full cache treats them as empty slots,
        and the next real tokens overwrite them), so the row's real tokens compute exactly what
        they would alone. This lets a batch whose rows have different step lengths (DT: envs
        just reset have no a_{t-1} token) take one pass instead of two. Their own outputs are
        not meaningful.
        """
        check_inputs("GPT", x, self.width, None, None)
        check_state("GPT", state, x.shape[0], ("pos", "k.0", "v.0"))
        start = state["pos"]
        if pad is not None:
            if bool(((pad > 0) & (start > 0)).any()) or bool((pad >= x.shape[1]).any()):
                raise ValueError(
                    "GPT.step: pad may only be given for rows with an empty cache (reset_state "
                    "first), and must leave at least one real token per row."
                )
            start = start - pad
        plan = self._plan(x, start, None, None, True, select, step=True, padded=pad is not None)
        y = self._run(x, plan, state)
        if plan.mode == "flash" and select is not None:
            y = y[:, select]
        state["pos"].copy_(plan.end)
        return y, state

    def _run(self, x: Tensor, plan: _Plan, cache: State | None) -> Tensor:
        h, last = x, len(self.blocks) - 1
        for layer, block in enumerate(self.blocks):
            if cache is None:
                h = block(h, plan, None, None, layer == last)
            else:
                h = block(h, plan, cache[f"k.{layer}"], cache[f"v.{layer}"], layer == last)
        return self.ln_final(h)

    def _plan(
        self,
        x: Tensor,
        start: Tensor | None,
        mask: Tensor | None,
        episode_start: Tensor | None,
        write: bool,
        select: Select,
        step: bool,
        padded: bool = False,
    ) -> _Plan:
        batch, length, _ = x.shape
        device, window, size = x.device, self.config.window, self.cache_size
        ring = window is not None
        simple = mask is None and episode_start is None
        if start is None and not write:  # training: no cache in, none out
            allowed, causal = self._fresh_mask(length, mask, episode_start, device)
            plan = _Plan(mode="fresh", allowed=allowed, causal=causal)
            return self._with_select(plan, select, length, device)
        begin = start if start is not None else x.new_zeros(batch, dtype=torch.long)
        steps = torch.arange(length, device=device)
        if simple:
            positions = begin[:, None] + steps  # (B, T)
            end = begin + length
            valid = torch.ones(batch, length, dtype=torch.bool, device=device)
            seg = torch.zeros(batch, length, dtype=torch.long, device=device)
        else:
            valid = mask if mask is not None else torch.ones_like(episode_start)  # type: ignore[arg-type]
            starts = episode_start if episode_start is not None else torch.zeros_like(valid)
            seg = segment_ids(starts)
            positions = token_positions(valid, starts, begin)
            end = _episode_end(positions, valid, seg)
            end = torch.where(seg[:, -1] > 0, end, torch.maximum(end, begin))
        if not ring and write and bool((end > size).any()):
            raise ValueError(
                f"GPT: an episode reached {int(end.max())} tokens but max_len={size} with "
                "window=None. Raise max_len, use a sliding window (window=W), or call "
                "reset_state at episode ends."
            )
        writes: dict = {"positions": positions, "start": begin, "end": end} if write else {}
        if simple and write:
            write_from = max(0, length - size) if ring else 0
            slots = positions[:, write_from:]
            writes["write_from"] = write_from
            writes["write_slots"] = torch.remainder(slots, size) if ring else slots
        elif write:
            in_last = seg == seg[:, -1:]
            writes["selected"] = valid & in_last & (positions >= end[:, None] - size)
            writes["clear"] = seg[:, -1] > 0
        if start is None:  # forward from an empty cache that it returns
            if simple:
                allowed, causal = self._fresh_mask(length, mask, episode_start, device)
            else:
                allowed = attention_mask(
                    positions, positions, seg, seg, valid, steps, steps, window
                )
                causal = False
            plan = _Plan(mode="fresh", allowed=allowed, causal=causal, **writes)
            return self._with_select(plan, select, length, device)
        # append first (each query reads the slots that hold its window after writing), unless
        # writing a ring step longer than `step_tokens` would overwrite slots it still reads
        appends = simple and write and (length <= self.config.step_tokens or not ring)
        if padded and not appends:
            raise ValueError(
                f"GPT.step: pad needs a step of at most step_tokens={self.config.step_tokens} "
                f"tokens with a sliding window; got {length}."
            )
        if step and not padded and self._use_flash(x):
            return _Plan(mode="flash", allowed=None, select=select, **writes)
        if appends:
            limit = size if ring else _read_limit(end, size)
            held = cache_slot_positions(end, size, ring)[:, None, :limit]  # (B, 1, S')
            allowed = (held >= 0) & (held <= positions[:, :, None])  # (B, T, S')
            if ring:
                allowed = allowed & (positions[:, :, None] - held < window)
            if padded:  # a padding token sees no key: let it see all (finite, never read)
                allowed = allowed | ~allowed.any(-1, keepdim=True)
            plan = _Plan(mode="append", allowed=allowed[:, None], limit=limit, **writes)
            return self._with_select(plan, select, length, device)
        limit = size if ring else _read_limit(begin, size)
        allowed = attention_mask(positions, positions, seg, seg, valid, steps, steps, window)
        held = cache_slot_positions(begin, size, ring)[:, :limit]  # (B, S')
        zeros, cache_index = torch.zeros_like(held), torch.full((limit,), -1, device=device)
        from_cache = attention_mask(
            positions, held, seg, zeros, held >= 0, steps, cache_index, window
        )
        allowed = torch.cat([from_cache, allowed], -1)  # (B, 1, T, S' + T)
        plan = _Plan(mode="concat", allowed=allowed, limit=limit, **writes)
        return self._with_select(plan, select, length, device)

    def _fresh_mask(
        self, length: int, mask: Tensor | None, episode_start: Tensor | None, device: torch.device
    ) -> tuple[Tensor | None, bool]:
        """(allowed, causal) for attention over the chunk alone, no incoming cache."""
        window = self.config.window
        if mask is None and episode_start is None:
            if window is None:
                return None, True
            return banded_causal_mask(length, window, device), False
        if episode_start is None and bool((mask[:, :-1] <= mask[:, 1:]).all()):  # type: ignore[index]
            # left padding only: index distances are real-token distances
            base = (
                causal_mask(length, device)
                if window is None
                else banded_causal_mask(length, window, device)
            )
            return base & mask[:, None, None, :], False  # type: ignore[index]  # (B, 1, T, T)
        valid = mask if mask is not None else torch.ones_like(episode_start)  # type: ignore[arg-type]
        starts = episode_start if episode_start is not None else torch.zeros_like(valid)
        positions, steps = token_positions(valid, starts), torch.arange(length, device=device)
        seg = segment_ids(starts)
        return attention_mask(positions, positions, seg, seg, valid, steps, steps, window), False

    def _with_select(self, plan: _Plan, select: Select, length: int, device: torch.device) -> _Plan:
        if select is None:
            return plan
        plan.select = select
        allowed = causal_mask(length, device) if plan.causal else plan.allowed
        assert allowed is not None
        plan.select_allowed = allowed[..., select, :]
        return plan

    def _use_flash(self, x: Tensor) -> bool:
        flash = self.config.backend in ("auto", "flash") and can_use_flash_kvcache(
            x, self.config.window is not None
        )
        if self.config.backend == "flash" and not flash:
            raise ValueError(
                "GPT: backend='flash' needs CUDA, float16/bfloat16, window=None and the flash-attn "
                "package; use backend='auto' to fall back to SDPA."
            )
        return flash


def _read_limit(filled: Tensor, size: int) -> int:
    """How many slots of a full cache to read: its filled prefix `max(filled)` in eager mode,
    the whole cache under tracing (an export fixes the shapes), a rounded-up prefix under
    torch.compile (`_compiled_read_limit`). Slots read beyond the prefix are empty and masked."""
    if torch.jit.is_tracing():
        return size
    if torch.compiler.is_compiling():
        return _compiled_read_limit(filled, size)
    return int(filled.max())


@torch.compiler.disable
def _compiled_read_limit(filled: Tensor, size: int) -> int:
    """The filled prefix rounded up to 16, 64, 256, ... (at most `size`): a rollout compiles a
    handful of read lengths instead of one per step, the 9th of which would send the step back
    to eager. Outside the graph, so that dynamo specializes on the rounded length only."""
    bucket, filled_max = 16, int(filled.max())
    while bucket < filled_max:
        bucket *= 4
    return min(bucket, size)


def _episode_end(positions: Tensor, valid: Tensor, seg: Tensor) -> Tensor:
    """(B,) tokens of the last episode in the chunk, counting the incoming cache for segment 0."""
    in_last = valid & (seg == seg[:, -1:])
    return torch.where(in_last, positions + 1, 0).amax(1)
