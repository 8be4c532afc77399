"""Gated Transformer-XL (GTrXL): a transformer memory for reinforcement learning.

Parisotto et al., 2020, "Stabilizing Transformers for Reinforcement Learning" (ICML), built on
Transformer-XL (Dai et al., 2019). Per layer l, with E the layer input and M its memory:

    Ybar = RelativeMHA(LN([StopGrad(M), E]))        # layer norm on the block inputs
    Y    = g_attn(E, ReLU(Ybar))                    # GRU-type gate instead of a residual
    Ebar = MLP(LN(Y))
    E'   = g_mlp(Y, ReLU(Ebar))

g(x, y) = (1 - z) * x + z * tanh(W_g y + U_g (r * x)), r = sigmoid(W_r y + U_r x),
z = sigmoid(W_z y + U_z x - b_g), with the learnable gate bias b_g initialised to 2 so every block
starts close to the identity. Attention scores use Transformer-XL's relative positions:
(q + u) . k_j + (q + v) . W_R R(i - j), with sinusoidal R and learnable u, v per layer.

Memory semantics, chosen so that stepping and the parallel forward compute one function: each
token at layer l attends to itself and the previous M real layer-l inputs of its episode (relative
distances 0..M). The memory holds the keys and values of those M previous tokens per layer
(W_kv LN(E) of each, computed once when the token was new), carried in `state` and detached, so
training on consecutive segments (truncated backpropagation) carries context without carrying
gradients, and a step projects only its new tokens. A parallel forward over a long sequence is
the same banded computation.

What differs from the paper: a final LayerNorm on the output (the residual stream of a pre-LN
stack is not normalised), padding and episode starts inside a chunk (padded tokens are skipped,
an episode start empties the memory), the memory length is exact per token (banded) rather than
"the previous segment", and the memory stores keys and values rather than hidden states: the
paper re-projects its stored hidden states with the current weights at every step (and sends
gradient into W_kv through them); here they are projected once, with the weights of the step
that produced them, which is also what a rollout acted on.

State: {"length": (B,) real entries in memory, "key.l"/"value.l": (B, M, D) per layer l, oldest
first, right-aligned}. Both `step` and `forward` return new tensors (the memory is small).
`select` (forward and step) computes the last block's outputs for the selected tokens only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqrl.nn.attention import BACKENDS, attention, attention_mask
from seqrl.nn.base import (
    ACTIVATIONS,
    State,
    as_done,
    check_inputs,
    check_state,
    compact_last,
    detach_state,
    segment_ids,
    token_positions,
    zero_rows,
)


@dataclass
class GTrXLConfig:
    width: int = 128
    """D: token width (inputs and outputs)."""
    layers: int = 3
    """Number of gated blocks."""
    heads: int = 1
    """Attention heads; must divide `width`."""
    memory: int = 64
    """M: each token attends to itself and the M previous real tokens of its episode."""
    dropout: float = 0.0
    """Dropout on attention weights and block outputs (inactive in eval())."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of `width`."""
    activation: str = "relu"
    """MLP hidden activation: one of gelu, gelu_tanh, relu, silu, tanh."""
    gate_bias: float = 2.0
    """Initial b_g: larger starts the gates closer to the identity map."""
    backend: str = "auto"
    """Attention backend: auto/sdpa (fused) or math (reference)."""

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"GTrXL: width={self.width} must be divisible by heads={self.heads}.")
        if self.memory < 1:
            raise ValueError(f"GTrXL: memory must be >= 1; got {self.memory}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"GTrXL: activation must be one of {sorted(ACTIVATIONS)}; got {self.activation!r}."
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"GTrXL: backend must be one of {BACKENDS}; got {self.backend!r}.")


class GRUGate(nn.Module):
    """g(x, y): the GRU-type gate that replaces the residual connection x + y."""

    def __init__(self, width: int, gate_bias: float) -> None:
        super().__init__()
        self.from_y = nn.Linear(width, 3 * width, bias=False)  # W_r, W_z, W_g
        self.from_x = nn.Linear(width, 2 * width, bias=False)  # U_r, U_z
        self.reset_x = nn.Linear(width, width, bias=False)  # U_g
        self.gate_bias = nn.Parameter(torch.full((width,), gate_bias))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        wr, wz, wg = self.from_y(y).chunk(3, -1)
        ur, uz = self.from_x(x).chunk(2, -1)
        r = torch.sigmoid(wr + ur)
        z = torch.sigmoid(wz + uz - self.gate_bias)
        candidate = torch.tanh(wg + self.reset_x(r * x))
        return (1 - z) * x + z * candidate


def sinusoid_table(length: int, width: int) -> Tensor:
    """(length, width) Transformer-XL sinusoids R_d for distances d = 0..length-1."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, width, 2, dtype=torch.float) / width))
    angles = torch.arange(length, dtype=torch.float)[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], -1)[:, :width]


class GTrXLBlock(nn.Module):
    """One gated block with relative multi-head attention over [memory, tokens]."""

    def __init__(self, config: GTrXLConfig) -> None:
        super().__init__()
        width, heads = config.width, config.heads
        self.heads, self.memory, self.dropout = heads, config.memory, config.dropout
        self.backend = "math" if config.backend == "math" else "sdpa"
        self.ln_attn = nn.LayerNorm(width)
        self.query = nn.Linear(width, width, bias=False)
        self.key_value = nn.Linear(width, 2 * width, bias=False)
        self.relative = nn.Linear(width, width, bias=False)  # W_R
        self.content_bias = nn.Parameter(torch.zeros(heads, width // heads))  # u
        self.position_bias = nn.Parameter(torch.zeros(heads, width // heads))  # v
        self.out = nn.Linear(width, width, bias=False)
        self.gate_attn = GRUGate(width, config.gate_bias)
        self.ln_mlp = nn.LayerNorm(width)
        hidden = config.mlp_ratio * width
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), ACTIVATIONS[config.activation](), nn.Linear(hidden, width)
        )
        self.gate_mlp = GRUGate(width, config.gate_bias)
        self.drop = nn.Dropout(config.dropout)
        self.register_buffer("table", sinusoid_table(config.memory + 1, width), persistent=False)

    def forward(
        self,
        h: Tensor,
        memory: tuple[Tensor, Tensor],
        allowed: Tensor,
        distance: Tensor,
        select: slice | Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """h (B, T, D), memory: keys and values (B, M, D), allowed (B, 1, T, M+T), distance
        (B, T, M+T) in 0..M -> output (B, T, D) (or (B, T', D) for `select`) and the keys and
        values of the stream [memory, h], each (B, M + T, D)."""
        batch, length, width = h.shape
        heads, head_width = self.heads, width // self.heads
        normed = self.ln_attn(h)  # (B, T, D)
        new_k, new_v = self.key_value(normed).chunk(2, -1)  # (B, T, D) each
        keys, values = torch.cat([memory[0], new_k], 1), torch.cat([memory[1], new_v], 1)
        if select is not None:
            h, normed = h[:, select], normed[:, select]
            allowed, distance = allowed[:, :, select], distance[:, select]
        length = h.shape[1]
        q = self.query(normed).view(batch, length, heads, head_width)
        k, v = keys.view(batch, -1, heads, head_width), values.view(batch, -1, heads, head_width)
        r = self.relative(self.table).view(-1, heads, head_width)  # (M + 1, H, Dh)
        by_distance = torch.einsum("bthd,mhd->bhtm", q + self.position_bias, r)  # (B, H, T, M+1)
        index = distance[:, None].expand(-1, heads, -1, -1)  # (B, H, T, M + T)
        bias = by_distance.gather(-1, index) / math.sqrt(head_width)
        attended = attention(
            (q + self.content_bias).transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            allowed,
            bias,
            dropout_p=self.dropout if self.training else 0.0,
            backend=self.backend,  # type: ignore[arg-type]
        )  # (B, H, T, Dh)
        y_bar = self.out(attended.transpose(1, 2).reshape(batch, length, width))
        y = self.gate_attn(h, torch.relu(self.drop(y_bar)))
        e_bar = self.mlp(self.ln_mlp(y))
        return self.gate_mlp(y, torch.relu(self.drop(e_bar))), keys, values


class GTrXL(nn.Module):
    """Gated Transformer-XL over (B, T, D) tokens; see the module docstring."""

    selects_tokens = True
    """`select=` computes the last block at the chosen tokens only (`seqrl.nn.base.selects`)."""

    def __init__(self, config: GTrXLConfig) -> None:
        super().__init__()
        self.config = config
        self.width = config.width
        self.blocks = nn.ModuleList(GTrXLBlock(config) for _ in range(config.layers))
        self.ln_final = nn.LayerNorm(config.width)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """An empty memory: {"length": (B,), "key.l"/"value.l": (B, M, D)}."""
        param = self.ln_final.weight
        device = param.device if device is None else device
        shape = (batch_size, self.config.memory, self.width)
        state = {"length": torch.zeros(batch_size, dtype=torch.long, device=device)}
        for layer in range(self.config.layers):
            state[f"key.{layer}"] = torch.zeros(shape, dtype=param.dtype, device=device)
            state[f"value.{layer}"] = torch.zeros(shape, dtype=param.dtype, device=device)
        return state

    def reset_state(self, state: State, done: Tensor) -> State:
        """Empty the memory rows where done (B,) is True (returns new tensors)."""
        return zero_rows(state, as_done(done, state["length"].shape[0], state["length"].device))

    def forward(
        self,
        x: Tensor,
        state: State | None = None,
        mask: Tensor | None = None,
        episode_start: Tensor | None = None,
        *,
        return_state: bool = True,
        select: slice | Tensor | None = None,
    ) -> tuple[Tensor, State | None]:
        """x (B, T, D) -> y (B, T, D) (or (B, T', D) for `select`) and the memory after the
        last real token (detached)."""
        check_inputs("GTrXL", x, self.width, mask, episode_start)
        y, new_state = self._run(x, state, mask, episode_start, select)
        return y, detach_state(new_state) if return_state else None

    def step(
        self,
        x: Tensor,
        state: State,
        *,
        select: slice | Tensor | None = None,
        pad: Tensor | None = None,
    ) -> tuple[Tensor, State]:
        """x (B, n, D) -> y (B, n, D), attending over the memory and the n new tokens.

        `pad` (B,) long: the first pad[b] tokens of row b are padding, skipped like masked tokens
        (GPT.step's argument of the same name; there the row's memory must be empty, here any).
        """
        check_inputs("GTrXL", x, self.width, None, None)
        mask = None
        if pad is not None:
            mask = torch.arange(x.shape[1], device=x.device)[None, :] >= pad[:, None]  # (B, n)
        y, new_state = self._run(x, state, mask, None, select)
        return y, detach_state(new_state)

    def _run(
        self,
        x: Tensor,
        state: State | None,
        mask: Tensor | None,
        episode_start: Tensor | None,
        select: slice | Tensor | None,
    ) -> tuple[Tensor, State]:
        batch, length, _ = x.shape
        size, device = self.config.memory, x.device
        if state is None:
            state = self.initial_state(batch, device)
        check_state("GTrXL", state, batch, ("length", "key.0", "value.0"))
        simple = mask is None and episode_start is None
        valid = (
            mask if mask is not None else torch.ones(batch, length, dtype=torch.bool, device=device)
        )
        starts = episode_start if episode_start is not None else torch.zeros_like(valid)
        seg = segment_ids(starts)  # (B, T)
        # Positions relative to the chunk: memory slots are -M..-1, real tokens count up from 0.
        positions = token_positions(valid, starts)  # (B, T)
        slots = torch.arange(size, device=device)
        memory_pos = (slots - size).expand(batch, size)  # (B, M)
        memory_valid = slots[None, :] >= size - state["length"][:, None]  # (B, M)
        key_pos = torch.cat([memory_pos, positions], 1)  # (B, M + T)
        key_seg = torch.cat([torch.zeros_like(memory_pos), seg], 1)
        key_valid = torch.cat([memory_valid, valid], 1)
        steps = torch.arange(length, device=device)
        key_index = torch.cat([slots - size, steps])
        allowed = attention_mask(
            positions, key_pos, seg, key_seg, key_valid, steps, key_index, size + 1
        )  # (B, 1, T, M + T)
        distance = (positions[:, :, None] - key_pos[:, None, :]).clamp(0, size)  # (B, T, M + T)
        if simple:
            keep = None
        else:  # what stays in memory: real entries of the chunk's last episode
            last = seg[:, -1:]
            keep = torch.cat([memory_valid & (last == 0), valid & (seg == last)], 1)
        new_state: State = {}
        h, last = x, len(self.blocks) - 1
        for layer, block in enumerate(self.blocks):
            memory = (state[f"key.{layer}"].detach(), state[f"value.{layer}"].detach())
            h, keys, values = block(h, memory, allowed, distance, select if layer == last else None)
            for name, stream in (("key", keys), ("value", values)):  # (B, M + T, D)
                if keep is None:
                    new_state[f"{name}.{layer}"] = stream[:, -size:]
                else:
                    new_state[f"{name}.{layer}"], count = compact_last(stream.detach(), keep, size)
        if keep is None:
            new_state["length"] = (state["length"] + length).clamp(max=size)
        else:
            new_state["length"] = count
        return self.ln_final(h), new_state
