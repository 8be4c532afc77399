"""Denoisers for diffusion policies: a 1-D temporal U-Net with FiLM, and a GPT denoiser.

Both map a noisy action trajectory, the diffusion step and a conditioning vector to a prediction
of the noise that was added (epsilon prediction):

    denoiser(sample (B, T, A), timestep (B,) int, condition (B, To, C)) -> (B, T, A)

`T` is the prediction horizon, `A` the action width, `To` the observation horizon and `C` the
width of one (normalized) observation. Nothing here knows about RL or noise schedules
(`seqrl/agents/diffusion.py` owns those).

- `ConditionalUnet1D` follows Diffusion Policy's `ConditionalUnet1D` (Chi et al., RSS 2023,
  `diffusion_policy/model/diffusion/conditional_unet1d.py`) with `cond_predict_scale=True`: the
  observation history is flattened to (B, To * C), concatenated with a sinusoidal + MLP embedding
  of the diffusion step, and every residual block applies it as FiLM (per-channel scale and
  bias). Convolutions run over time: three levels by default (`down_dims` 256/512/1024), each
  halving T except the last, so T must be divisible by 2 ** (levels - 1).
- `TransformerDenoiser` is seqrl's GPT (`seqrl.nn.gpt`, causal, pre-LN) over a prefix of
  conditioning tokens followed by one token per action step:

      token   [step] [o_1 .. o_To] [a_1 .. a_T]      + learned position embedding
      GPT     causal: a_t sees the step token, every observation token and a_1..a_t
      head    the outputs at the a-tokens -> epsilon (B, T, A)

  Diffusion Policy's transformer is an encoder-decoder (cross-attention from the action tokens
  to the step and observation tokens, causal self-attention among actions); the prefix form here
  gives every action token the same information with one stack of seqrl's own blocks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seqrl.nn.gpt import GPT, GPTConfig


class SinusoidalStepEmbedding(nn.Module):
    """Diffusion step t (B,) -> (B, dim) sin/cos features at geometric frequencies."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"step embedding width must be even and >= 4; got {dim}.")
        self.dim = dim

    def forward(self, timestep: Tensor) -> Tensor:
        half = self.dim // 2
        scale = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=timestep.device) * -scale)  # (dim/2,)
        angles = timestep.float()[:, None] * freqs[None, :]  # (B, dim/2)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (B, dim)


def step_embedding(dim: int) -> nn.Sequential:
    """t (B,) -> (B, dim): sinusoidal features, then Linear(4 dim), Mish, Linear(dim)."""
    return nn.Sequential(
        SinusoidalStepEmbedding(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim)
    )


def _timestep(timestep: Tensor | int, batch: int, device: torch.device) -> Tensor:
    """A scalar or (B,) diffusion step as (B,) int64."""
    t = torch.as_tensor(timestep, device=device)
    return t.expand(batch) if t.dim() == 0 else t


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish over (B, C, T)."""

    def __init__(self, channels_in: int, channels_out: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(channels_in, channels_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(groups, channels_out),
            nn.Mish(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class FiLMResidualBlock(nn.Module):
    """Two conv blocks; the condition sets a per-channel scale and bias after the first."""

    def __init__(
        self, channels_in: int, channels_out: int, cond_dim: int, kernel_size: int, groups: int
    ) -> None:
        super().__init__()
        self.conv_in = Conv1dBlock(channels_in, channels_out, kernel_size, groups)
        self.conv_out = Conv1dBlock(channels_out, channels_out, kernel_size, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * channels_out))
        self.residual = (
            nn.Conv1d(channels_in, channels_out, 1)
            if channels_in != channels_out
            else nn.Identity()
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x (B, C_in, T), cond (B, cond_dim) -> (B, C_out, T)."""
        out = self.conv_in(x)
        scale, bias = self.film(cond)[:, :, None].chunk(2, dim=1)  # (B, C_out, 1) each
        out = self.conv_out(scale * out + bias)
        return out + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Diffusion Policy's temporal U-Net with FiLM conditioning; see the module docstring.

    Args:
        action_dim: A, channels of the denoised trajectory.
        cond_dim: width of the flattened condition (To * C).
        down_dims: channels per level (each level but the last halves T).
        kernel_size: temporal kernel of every convolution.
        groups: GroupNorm groups (must divide every entry of `down_dims`).
        step_embed_dim: width of the diffusion-step embedding.
    """

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        down_dims: Sequence[int] = (256, 512, 1024),
        kernel_size: int = 5,
        groups: int = 8,
        step_embed_dim: int = 256,
    ) -> None:
        super().__init__()
        dims = [action_dim, *down_dims]
        bad = [d for d in down_dims if d % groups]
        if not down_dims or bad:
            raise ValueError(
                f"ConditionalUnet1D: down_dims={list(down_dims)} must be non-empty and divisible "
                f"by groups={groups}; change agent.down_dims or agent.groups."
            )
        self.levels = len(down_dims)
        self.step_embed = step_embedding(step_embed_dim)
        film_dim = step_embed_dim + cond_dim

        def block(c_in: int, c_out: int) -> FiLMResidualBlock:
            return FiLMResidualBlock(c_in, c_out, film_dim, kernel_size, groups)

        self.down = nn.ModuleList()
        for level, (c_in, c_out) in enumerate(itertools.pairwise(dims)):
            last = level == self.levels - 1
            resample = nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, 2, 1)
            self.down.append(nn.ModuleList([block(c_in, c_out), block(c_out, c_out), resample]))
        self.mid = nn.ModuleList([block(dims[-1], dims[-1]), block(dims[-1], dims[-1])])
        self.up = nn.ModuleList()
        for c_in, c_out in reversed(list(itertools.pairwise(dims[1:]))):
            upsample = nn.ConvTranspose1d(c_in, c_in, 4, 2, 1)
            self.up.append(nn.ModuleList([block(2 * c_out, c_in), block(c_in, c_in), upsample]))
        self.final = nn.Sequential(
            Conv1dBlock(dims[1], dims[1], kernel_size, groups), nn.Conv1d(dims[1], action_dim, 1)
        )

    def forward(self, sample: Tensor, timestep: Tensor | int, condition: Tensor) -> Tensor:
        """sample (B, T, A), timestep (B,) or scalar, condition (B, To, C) -> epsilon (B, T, A)."""
        batch, horizon, _ = sample.shape
        factor = 2 ** (self.levels - 1)
        if horizon % factor:
            raise ValueError(
                f"ConditionalUnet1D: horizon {horizon} must be divisible by {factor} for "
                f"{self.levels} levels; change agent.horizon or agent.down_dims."
            )
        steps = _timestep(timestep, batch, sample.device)
        film = torch.cat([self.step_embed(steps), condition.reshape(batch, -1)], -1)  # (B, F)
        x = sample.transpose(1, 2)  # (B, A, T)
        skips = []
        for first, second, downsample in self.down:  # type: ignore[misc]
            x = second(first(x, film), film)
            skips.append(x)
            x = downsample(x)  # (B, C, T / 2) except at the last level
        for block in self.mid:
            x = block(x, film)
        for first, second, upsample in self.up:  # type: ignore[misc]
            x = torch.cat([x, skips.pop()], dim=1)  # (B, 2C, T')
            x = upsample(second(first(x, film), film))
        return self.final(x).transpose(1, 2)  # (B, T, A)


class TransformerDenoiser(nn.Module):
    """seqrl's GPT over [step, observation tokens, action tokens]; see the module docstring.

    Args:
        action_dim: A.
        obs_dim: C, width of one observation.
        horizon: T, action tokens.
        obs_horizon: To, observation tokens.
        width, layers, heads, dropout: the GPT's.
    """

    def __init__(
        self,
        action_dim: int,
        obs_dim: int,
        horizon: int,
        obs_horizon: int,
        width: int = 256,
        layers: int = 8,
        heads: int = 4,
        dropout: float = 0.01,
    ) -> None:
        super().__init__()
        self.horizon, self.obs_horizon = horizon, obs_horizon
        tokens = 1 + obs_horizon + horizon
        self.step_embed = SinusoidalStepEmbedding(width)
        self.embed_obs = nn.Linear(obs_dim, width)
        self.embed_action = nn.Linear(action_dim, width)
        self.position = nn.Parameter(torch.zeros(1, tokens, width))
        self.gpt = GPT(
            GPTConfig(width=width, layers=layers, heads=heads, dropout=dropout, max_len=tokens)
        )
        self.head = nn.Linear(width, action_dim)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, sample: Tensor, timestep: Tensor | int, condition: Tensor) -> Tensor:
        """sample (B, T, A), timestep (B,) or scalar, condition (B, To, C) -> epsilon (B, T, A)."""
        batch = sample.shape[0]
        steps = _timestep(timestep, batch, sample.device)
        tokens = torch.cat(
            [
                self.step_embed(steps)[:, None],  # (B, 1, D)
                self.embed_obs(condition),  # (B, To, D)
                self.embed_action(sample),  # (B, T, D)
            ],
            dim=1,
        )  # (B, 1 + To + T, D)
        hidden, _ = self.gpt(tokens + self.position, return_state=False)
        return self.head(hidden[:, -self.horizon :])  # (B, T, A)
