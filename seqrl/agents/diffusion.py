"""Diffusion Policy: DDPM-trained action chunks, DDPM or DDIM sampling, a receding horizon.

Chi et al., "Diffusion Policy: Visuomotor Policy Learning via Action Diffusion" (RSS 2023), the
low-dimensional (state) variant: from the last To observations, denoise a trajectory of Tp
actions (epsilon prediction, 100 training steps, `squaredcos_cap_v2`, x0 clipped to [-1, 1]),
execute Ta of them open-loop, then plan again. Noise schedules and samplers are diffusers'
`DDPMScheduler` / `DDIMScheduler`; the denoisers are in `seqrl/nn/diffusion.py` (the 1-D temporal
U-Net with FiLM, or seqrl's GPT with observation tokens as a prefix).

Receding horizon, per env (To=2, Tp=16, Ta=8 as the reference's low-dimensional configs):

```
  env step        t-1   t    t+1  ...  t+7  | t+8  ...
  observations    o    o          (each step pushed into the To-deep history)
  chunk sampled        *  at t, from [o_{t-1}, o_t]: a^_{t-1} a^_t ... a^_{t+14}
  executed             a^_t a^_{t+1} ... a^_{t+7}   (chunk[To-1 : To-1+Ta])
  next chunk                                    * at t+8, from [o_{t+7}, o_{t+8}]
  reset(done)     history and queue of those envs emptied; at the next step the first
                  observation fills all To slots and a chunk is sampled at once
```

As the reference:
- observations and actions are min-max normalized to [-1, 1] per dimension with the dataset's
  ranges (a constant dimension maps to 0); the ranges are model buffers;
- training windows are Diffusion Policy's `SequenceSampler` windows (`DiffusionWindowSampler`):
  To-1 steps of padding before an episode and Ta-1 after it, filled by repeating the first / last
  step (observation and action); the loss is the plain MSE over every step, padding included
  (LeRobot keeps this "as the original"); `WindowBatch.mask` marks the repeated steps anyway;
- EMA of the weights with decay 1 - (1 + step) ** -0.75 capped at 0.9999 (0 for the first two
  updates); the policy, evaluation, checkpoints' `model.safetensors` and `load_policy` all use the
  EMA weights (`state_dict()["model"]`); the trained weights are `state_dict()["train_model"]`;
- AdamW (0.95, 0.999), lr 1e-4, weight decay 1e-6, 500 warm-up updates, cosine decay to 0 at
  `lr_decay_steps` (the reference decays over its whole run; None keeps the rate constant).

What differs: discrete action spaces are supported by denoising the one-hot code in [-1, 1] and
taking its argmax (the reference has continuous actions only); the transformer denoiser is a
prefix-conditioned GPT instead of an encoder-decoder; the policy's noise is reproducible per env:
each chunk's noise comes from a generator seeded by (policy seed, env index, chunks sampled since
that env's reset), so an env's actions do not depend on which other envs replan at the same step.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqrl.agents.examples import example_window_batch
from seqrl.agents.export_step import ExportStep
from seqrl.agents.registry import AgentEntry, policy_options, warmup_warnings
from seqrl.core import (
    DataStats,
    EnvSpec,
    Loop,
    PolicyStep,
    WindowBatch,
    check_observations,
    env_rows,
)
from seqrl.nn.diffusion import ConditionalUnet1D, TransformerDenoiser
from seqrl.nn.heads import ActionScaling
from seqrl.nn.optim import optimizer_step

DENOISERS = ("unet", "transformer")
SAMPLERS = ("ddpm", "ddim")
PREDICTION_TYPES = ("epsilon", "sample")
OBS_NORMALIZATIONS = ("range", "standard")
BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")


@dataclass
class DiffusionConfig:
    """Diffusion Policy settings (defaults: the reference's low-dimensional U-Net config)."""

    denoiser: str = "unet"
    """"unet" (1-D temporal U-Net with FiLM) or "transformer" (seqrl's GPT, prefix-conditioned)."""
    obs_horizon: int = 2
    """To: observations the policy conditions on."""
    horizon: int = 16
    """Tp: actions per denoised chunk (and steps per training window)."""
    action_horizon: int = 8
    """Ta: actions executed from each chunk before planning again; <= horizon - obs_horizon + 1."""
    obs_normalization: str = "range"
    """How observations are scaled before conditioning: "range" maps the dataset's min..max to
    [-1, 1] (the reference); "standard" uses (obs - mean) / std, which learns much faster where
    a few outliers stretch a dimension's range (Hopper's velocities; see the README)."""
    down_dims: list[int] = field(default_factory=lambda: [256, 512, 1024])
    """unet: channels per level (each level but the last halves the horizon)."""
    kernel_size: int = 5
    """unet: temporal convolution kernel."""
    groups: int = 8
    """unet: GroupNorm groups (must divide every entry of down_dims)."""
    step_embed_dim: int = 256
    """unet: width of the diffusion-step embedding."""
    width: int = 256
    """transformer: token width."""
    layers: int = 8
    """transformer: GPT blocks."""
    heads: int = 4
    """transformer: attention heads."""
    dropout: float = 0.01
    """transformer: dropout (attention and residual branches)."""
    train_timesteps: int = 100
    """Diffusion steps of the training noise schedule (DDPMScheduler.num_train_timesteps)."""
    beta_schedule: str = "squaredcos_cap_v2"
    """Noise schedule: squaredcos_cap_v2, linear or scaled_linear."""
    prediction_type: str = "epsilon"
    """What the denoiser predicts: "epsilon" (the noise; the reference) or "sample" (the clean
    chunk x0, which learns a usable policy in far fewer updates on low-dimensional control;
    see the README's Hopper table)."""
    lr: float = 1e-4
    """AdamW learning rate after warm-up."""
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    """AdamW betas."""
    weight_decay: float = 1e-6
    """AdamW weight decay."""
    warmup_steps: int = 500
    """Linear learning-rate warm-up, in updates."""
    lr_decay_steps: int | None = None
    """Cosine decay of the learning rate to 0 at this update (set it to train.steps as the
    reference does); None keeps it constant after warm-up."""
    grad_clip: float | None = None
    """Max global gradient norm (None: no clipping, as the reference)."""
    ema_power: float = 0.75
    """EMA warm-up exponent: decay = 1 - (1 + step) ** -ema_power."""
    ema_max_decay: float = 0.9999
    """Upper bound of the EMA decay."""
    batch_size: int = 256
    """Windows per update."""
    device: str = "cpu"
    """Torch device for training and inference."""

    def __post_init__(self) -> None:
        if self.denoiser not in DENOISERS:
            raise ValueError(f"agent.denoiser must be one of {DENOISERS}; got {self.denoiser!r}")
        if self.obs_normalization not in OBS_NORMALIZATIONS:
            raise ValueError(
                f"agent.obs_normalization must be one of {OBS_NORMALIZATIONS}; "
                f"got {self.obs_normalization!r}"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"agent.prediction_type must be one of {PREDICTION_TYPES}; "
                f"got {self.prediction_type!r}"
            )
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"agent.beta_schedule must be one of {BETA_SCHEDULES}; got {self.beta_schedule!r}"
            )
        for name in ("obs_horizon", "horizon", "action_horizon", "train_timesteps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"agent.{name} must be >= 1, got {getattr(self, name)}")
        if self.action_horizon > self.horizon - self.obs_horizon + 1:
            raise ValueError(
                f"agent.action_horizon={self.action_horizon} must be <= horizon - obs_horizon + 1 "
                f"= {self.horizon - self.obs_horizon + 1}; lower it or raise agent.horizon"
            )
        if not 0.0 <= self.ema_max_decay < 1.0:
            raise ValueError(f"agent.ema_max_decay must lie in [0, 1), got {self.ema_max_decay}")


@dataclass
class DiffusionPolicyOptions:
    """Options of a diffusion policy (`--policy scheduler=ddim --policy inference_steps=8`)."""

    scheduler: str = "ddpm"
    """"ddpm" (stochastic, diffusers' DDPMScheduler) or "ddim" (deterministic given the initial
    noise, DDIMScheduler with eta 0)."""
    inference_steps: int | None = None
    """Denoising steps per chunk, evenly spaced over the training steps; None = all of them."""
    seed: int = 0
    """Seed of the per-env noise streams: the same seed gives the same actions."""
    action_horizon: int | None = None
    """Actions executed from each chunk before planning again (None: the agent's Ta); at most
    horizon - obs_horizon + 1. Fewer means more replanning: slower, but more robust where the
    open-loop chunk drifts (Hopper: see the README)."""

    def __post_init__(self) -> None:
        if self.scheduler not in SAMPLERS:
            raise ValueError(f"policy.scheduler must be 'ddpm' or 'ddim', got {self.scheduler!r}")
        if self.inference_steps is not None and self.inference_steps < 1:
            raise ValueError(f"policy.inference_steps must be >= 1, got {self.inference_steps}")
        if self.seed < 0:
            raise ValueError(f"policy.seed must be >= 0, got {self.seed}")
        if self.action_horizon is not None and self.action_horizon < 1:
            raise ValueError(f"policy.action_horizon must be >= 1, got {self.action_horizon}")


def executed_actions(config: DiffusionConfig, options: DiffusionPolicyOptions) -> int:
    """Ta for a policy: the option if set (checked against the chunk), else the agent's."""
    if options.action_horizon is None:
        return config.action_horizon
    most = config.horizon - config.obs_horizon + 1
    if options.action_horizon > most:
        raise ValueError(
            f"policy.action_horizon={options.action_horizon} exceeds horizon - obs_horizon + 1 = "
            f"{most} (the actions of a chunk from the current step on); use at most {most}"
        )
    return options.action_horizon


def noise_scheduler(config: DiffusionConfig, kind: str = "ddpm", steps: int | None = None) -> Any:
    """diffusers' DDPMScheduler (training, and the "ddpm" sampler) or DDIMScheduler, with
    `steps` inference timesteps set (None: every training step)."""
    from diffusers import DDIMScheduler, DDPMScheduler  # ~3 s to import: only when needed

    common = {
        "num_train_timesteps": config.train_timesteps,
        "beta_schedule": config.beta_schedule,
        "clip_sample": True,
        "prediction_type": config.prediction_type,
    }
    if kind == "ddpm":
        scheduler = DDPMScheduler(variance_type="fixed_small", **common)
    else:
        scheduler = DDIMScheduler(set_alpha_to_one=True, steps_offset=0, **common)
    steps = config.train_timesteps if steps is None else steps
    if steps > config.train_timesteps:
        raise ValueError(
            f"policy.inference_steps={steps} exceeds agent.train_timesteps="
            f"{config.train_timesteps}; use at most that many"
        )
    scheduler.set_timesteps(steps)
    return scheduler


def _range_scaling(
    dim: int, low: Any, high: Any, default_low: Any = -1.0, default_high: Any = 1.0
) -> ActionScaling:
    """Min-max map [low, high] -> [-1, 1] per dim (a constant dim maps to 0), as model buffers."""
    lo = np.broadcast_to(np.asarray(default_low if low is None else low, float), (dim,)).copy()
    hi = np.broadcast_to(np.asarray(default_high if high is None else high, float), (dim,)).copy()
    flat = ~(hi - lo > 1e-4)
    lo[flat], hi[flat] = lo[flat] - 1.0, lo[flat] + 1.0  # centre = value, half range 1
    return ActionScaling(dim, lo.tolist(), hi.tolist())


class DiffusionModel(nn.Module):
    """Normalization buffers + the denoiser; `sample` runs a noise scheduler's reverse chain."""

    def __init__(
        self, config: DiffusionConfig, spec: EnvSpec, stats: DataStats | None = None
    ) -> None:
        super().__init__()
        self.config, self.spec = config, spec
        self.obs_dim = int(np.prod(spec.obs_shape)) if spec.obs_shape else 1
        stats = stats or {}
        low, high = stats.get("observation_min"), stats.get("observation_max")
        if config.obs_normalization == "standard" and "observation_mean" in stats:
            mean, std = np.asarray(stats["observation_mean"]), np.asarray(stats["observation_std"])
            low, high = mean - std, mean + std  # the same affine map as (obs - mean) / std
        self.obs_scaling = _range_scaling(self.obs_dim, low, high)
        if not spec.discrete:  # data range if known, else the Box (unbounded dims as they are)
            low = stats.get("action_min")
            box = low is None
            self.action_scaling = _range_scaling(
                spec.action_dim,
                spec.action_low if box else low,
                spec.action_high if box else stats.get("action_max"),
            )
        if config.denoiser == "unet":
            self.denoiser: nn.Module = ConditionalUnet1D(
                spec.action_dim,
                config.obs_horizon * self.obs_dim,
                config.down_dims,
                config.kernel_size,
                config.groups,
                config.step_embed_dim,
            )
        else:
            self.denoiser = TransformerDenoiser(
                spec.action_dim,
                self.obs_dim,
                config.horizon,
                config.obs_horizon,
                config.width,
                config.layers,
                config.heads,
                config.dropout,
            )

    def forward(self, sample: Tensor, steps: Tensor, cond: Tensor) -> Tensor:
        """The denoiser's output (B, Tp, A) for noisy chunks `sample` (B, Tp, A) at diffusion
        steps `steps` (B,) given `cond` (B, To, C). The training loss calls the model, so
        `--compile` (`nn.Module.compile`) compiles it; sampling calls `denoiser` eagerly."""
        return self.denoiser(sample, steps, cond)

    def condition(self, observations: Tensor) -> Tensor:
        """(B, To, *obs_shape) raw -> (B, To, C) in [-1, 1] over the dataset's range."""
        batch, steps = observations.shape[:2]
        return self.obs_scaling.to_model(observations.reshape(batch, steps, self.obs_dim).float())

    def to_model(self, actions: Tensor) -> Tensor:
        """(B, T, *act_shape) env actions -> (B, T, A) in [-1, 1] (discrete: one-hot code)."""
        if self.spec.discrete:
            return F.one_hot(actions.long(), self.spec.action_dim).float() * 2 - 1
        return self.action_scaling.to_model(actions.float())

    def to_env(self, actions: Tensor) -> Tensor:
        """(B, T, A) model units -> (B, T, *act_shape) env actions (discrete: argmax)."""
        if self.spec.discrete:
            return actions.argmax(-1)
        return self.action_scaling.to_env(actions, clip=True)

    @torch.no_grad()
    def sample(
        self,
        observations: Tensor,
        scheduler: Any,
        noise: Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        **step_options: Any,
    ) -> Tensor:
        """Denoise one chunk per row: observations (B, To, *obs_shape) raw -> (B, Tp, A) model
        units. `noise` (B, Tp, A) is the initial sample (default: drawn from `generator`, one
        generator or one per row); a stochastic scheduler (DDPM) draws its per-step noise from
        `generator` too. `step_options` go to `scheduler.step` (DDIM: `eta`, ...)."""
        from diffusers.utils.torch_utils import randn_tensor

        cond = self.condition(observations)  # (B, To, C)
        shape = (cond.shape[0], self.config.horizon, self.spec.action_dim)
        if noise is None:
            sample = randn_tensor(shape, generator=generator, device=cond.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape} (B, Tp, A); got {tuple(noise.shape)}")
        else:
            sample = noise.to(cond)
        for t in scheduler.timesteps:
            epsilon = self.denoiser(sample, t.to(cond.device), cond)  # (B, Tp, A)
            step = scheduler.step(epsilon, t, sample, generator=generator, **step_options)
            sample = step.prev_sample
        return sample


def diffusion_loss(
    model: DiffusionModel, scheduler: Any, batch: WindowBatch
) -> tuple[Tensor, dict[str, float]]:
    """Epsilon-prediction MSE at a uniformly drawn diffusion step, over every step of the window
    (padding included, as the reference)."""
    horizon = model.config.horizon
    if batch.actions.shape[1] != horizon:
        raise ValueError(
            f"diffusion batches must hold windows of agent.horizon={horizon} steps; got "
            f"{batch.actions.shape[1]} (build the sampler with make_sampler(config, ...))"
        )
    cond = model.condition(batch.observations[:, : model.config.obs_horizon])  # (B, To, C)
    clean = model.to_model(batch.actions)  # (B, Tp, A)
    noise = torch.randn_like(clean)
    steps = torch.randint(
        0, model.config.train_timesteps, (clean.shape[0],), device=clean.device
    )  # (B,)
    noisy = scheduler.add_noise(clean, noise, steps)
    target = clean if model.config.prediction_type == "sample" else noise
    loss = F.mse_loss(model(noisy, steps, cond), target)
    return loss, {"train/loss": loss.item()}


def ema_decay(updates_before: int, power: float, max_decay: float) -> float:
    """Diffusion Policy's EMA decay for the update after `updates_before` earlier ones:
    0 for the first two, then 1 - (updates_before) ** -power, capped at `max_decay`."""
    step = max(0, updates_before - 1)
    if step == 0:
        return 0.0
    return min(1.0 - (1.0 + step) ** -power, max_decay)


class DiffusionAgent:
    """Model (trained), its EMA copy (acts), AdamW + warm-up/cosine, `update(WindowBatch)`."""

    def __init__(
        self, config: DiffusionConfig, spec: EnvSpec, stats: DataStats | None = None
    ) -> None:
        self.config, self.spec = config, spec
        self.device = torch.device(config.device)
        self.model = DiffusionModel(config, spec, stats).to(self.device)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.noise_scheduler = noise_scheduler(config)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.lr,
            betas=tuple(config.betas),  # type: ignore[arg-type]
            weight_decay=config.weight_decay,
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.updates = 0

    def _lr_factor(self, step: int) -> float:
        warmup, decay = max(self.config.warmup_steps, 1), self.config.lr_decay_steps
        if step < warmup:
            return (step + 1) / warmup
        if decay is None:
            return 1.0
        progress = min((step - warmup) / max(decay - warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def update(self, batch: WindowBatch) -> dict[str, float]:
        self.model.train()
        loss, metrics = diffusion_loss(self.model, self.noise_scheduler, batch.to(self.device))
        metrics["train/grad_norm"] = optimizer_step(
            self.optimizer, loss, self.model.parameters(), self.config.grad_clip, self.lr_scheduler
        )
        metrics["train/lr"] = float(self.lr_scheduler.get_last_lr()[0])
        metrics["train/ema_decay"] = self._update_ema()
        self.updates += 1
        return metrics

    @torch.no_grad()
    def _update_ema(self) -> float:
        decay = ema_decay(self.updates, self.config.ema_power, self.config.ema_max_decay)
        for ema, param in zip(self.ema_model.parameters(), self.model.parameters()):
            ema.lerp_(param.detach(), 1.0 - decay)
        for ema, buffer in zip(self.ema_model.buffers(), self.model.buffers()):
            ema.copy_(buffer)
        return decay

    def policy(
        self, num_envs: int = 1, *, explore: bool = False, **options: Any
    ) -> DiffusionPolicy:
        """A batched receding-horizon policy acting with the EMA weights. Samples are already
        stochastic, so `explore` changes nothing."""
        chosen = policy_options(DiffusionPolicyOptions, options)
        return DiffusionPolicy(self.ema_model, num_envs, chosen)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.ema_model.state_dict(),
            "train_model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.lr_scheduler.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; with only `"model"` (inference weights, as `load_policy`),
        both the EMA and the trained model get them."""
        self.ema_model.load_state_dict(state["model"])
        self.model.load_state_dict(state.get("train_model", state["model"]))
        if "optimizer" not in state:
            return
        # a deep copy: Optimizer.load_state_dict keeps the given tensors (shared Adam moments)
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.lr_scheduler.load_state_dict(state["scheduler"])
        self.updates = int(state["updates"])


class DiffusionPolicy:
    """Receding-horizon rollouts over N envs: per env the last To observations and a queue of
    Ta actions; a chunk is sampled (for the envs whose queue is empty only) when needed.

    `act(obs, reward=None, noise=None)`: `noise` (N, Tp, A), optional, is the initial sample of
    the chunks planned at this step (rows of envs that do not plan are ignored); without it each
    env's noise comes from its own generator (see the module docstring). After `act`,
    `replanned` (N,) bool says which envs sampled a chunk at that step.
    """

    def __init__(
        self, model: DiffusionModel, num_envs: int, options: DiffusionPolicyOptions
    ) -> None:
        config = model.config
        self.model, self.num_envs, self.options = model, num_envs, options
        self.device = next(model.parameters()).device
        self.scheduler = noise_scheduler(config, options.scheduler, options.inference_steps)
        self.obs_horizon = config.obs_horizon
        self.action_horizon = executed_actions(config, options)
        n, dev = num_envs, self.device
        self.history = torch.zeros((n, config.obs_horizon, *model.spec.obs_shape), device=dev)
        dtype = torch.long if model.spec.discrete else torch.float32
        self.queue = torch.zeros(
            (n, self.action_horizon, *model.spec.action_shape), dtype=dtype, device=dev
        )  # (N, Ta, *act)
        self.queue_pos = torch.full((n,), self.action_horizon, device=dev)  # (N,) Ta = empty
        self.started = torch.zeros(n, dtype=torch.bool, device=dev)  # (N,) history filled
        self.chunks = torch.zeros(n, dtype=torch.long, device=dev)  # (N,) since reset
        self.replanned = torch.zeros(n, dtype=torch.bool, device=dev)

    def reset(self, done: np.ndarray | Tensor | None = None) -> None:
        rows = env_rows(done, self.num_envs, self.device)
        self.started[rows] = False
        self.queue_pos[rows] = self.action_horizon
        self.chunks[rows] = 0
        self.history[rows] = 0

    @torch.no_grad()
    def act(
        self,
        obs: np.ndarray | Tensor,
        reward: np.ndarray | Tensor | None = None,
        noise: Tensor | None = None,
    ) -> PolicyStep:
        """`reward` is accepted for the common signature and unused."""
        obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)
        check_observations("DiffusionPolicy", obs_t, self.model.spec.obs_shape, self.num_envs)
        pushed = torch.cat([self.history[:, 1:], obs_t[:, None]], dim=1)  # (N, To, *obs)
        repeated = obs_t[:, None].expand_as(self.history)  # first step: o_0 in every slot
        fresh = self.started.reshape(-1, *[1] * (self.history.dim() - 1))
        self.history = torch.where(fresh, pushed, repeated)
        self.started[:] = True
        self.replanned = self.queue_pos >= self.action_horizon
        if self.replanned.any():
            self._plan(self.replanned.nonzero().squeeze(1), noise)
        action = self.queue[torch.arange(self.num_envs, device=self.device), self.queue_pos]
        self.queue_pos += 1
        return PolicyStep(action=action.clone())

    @torch.compiler.disable
    def _plan(self, rows: Tensor, noise: Tensor | None) -> None:
        """Sample chunks for envs `rows` (R,) and refill their queues with chunk[To-1 : To-1+Ta].

        Runs eagerly under `--compile`: the rows that replan, the per-(env, chunk) seeds and the
        scheduler's `t.item()` change from call to call, so a compiled plan would recompile
        until dynamo's limit and then run eagerly anyway."""
        generators = [
            torch.Generator(self.device).manual_seed(self._stream_seed(int(env), int(chunk)))
            for env, chunk in zip(rows.tolist(), self.chunks[rows].tolist())
        ]
        initial = None if noise is None else torch.as_tensor(noise, device=self.device)[rows]
        if self.model.training:  # acting is inference; `update` switches to train() itself
            self.model.eval()
        chunk = self.model.sample(self.history[rows], self.scheduler, initial, generators)
        first = self.obs_horizon - 1
        actions = self.model.to_env(chunk[:, first : first + self.action_horizon])  # (R, Ta, *act)
        self.queue[rows] = actions.to(self.queue.dtype)
        self.queue_pos[rows] = 0
        self.chunks[rows] += 1

    def _stream_seed(self, env: int, chunk: int) -> int:
        """A well-mixed 63-bit seed for (policy seed, env, chunk since reset)."""
        words = np.random.SeedSequence([self.options.seed, env, chunk]).generate_state(2)
        return int(words[0]) << 31 ^ int(words[1])


class DiffusionWindowSampler:
    """Diffusion Policy's training windows over an `EpisodeStore`, as `WindowBatch`es.

    Windows of `horizon` steps start at every step from To-1 before an episode's first step to
    Ta-1 after the last full window (the reference `SequenceSampler`'s `pad_before = To-1`,
    `pad_after = Ta-1`); steps outside the episode repeat its first or last step (observation,
    action, reward) and have `mask == False`. Windows are drawn uniformly with replacement from
    a NumPy generator (`state_dict` holds it). `returns_to_go` is zero (unused).
    """

    def __init__(
        self, store: Any, horizon: int, obs_horizon: int, action_horizon: int,
        batch_size: int, seed: int = 0,
    ) -> None:  # fmt: skip
        self.store, self.horizon, self.batch_size = store, horizon, batch_size
        self.rng = np.random.default_rng(seed)
        offsets = np.asarray(store.episode_offsets, dtype=np.int64)
        lengths = np.diff(offsets)
        starts, episodes = [], []
        for episode, (offset, length) in enumerate(zip(offsets[:-1], lengths)):
            first, last = -(obs_horizon - 1), length - horizon + action_horizon - 1
            if last >= first:
                starts.append(offset + np.arange(first, last + 1))
                episodes.append(np.full(last - first + 1, episode))
        if not starts:
            raise ValueError(
                f"{getattr(store.metadata, 'source', 'dataset')}: no episode is long enough for "
                f"agent.horizon={horizon} (longest: {int(lengths.max())} steps, needs "
                f"{horizon - obs_horizon - action_horizon + 2}); lower agent.horizon"
            )
        self.window_starts = np.concatenate(starts)  # (W,) flat index, may precede the episode
        self.window_episodes = np.concatenate(episodes)  # (W,)
        self.offsets = offsets

    def sample(self) -> WindowBatch:
        pick = self.rng.integers(0, len(self.window_starts), size=self.batch_size)
        episode = self.window_episodes[pick]
        first, last = self.offsets[episode], self.offsets[episode + 1] - 1  # (B,)
        wanted = self.window_starts[pick, None] + np.arange(self.horizon)  # (B, K)
        index = np.clip(wanted, first[:, None], last[:, None])  # edge padding
        store = self.store
        obs, actions = store.observations[index], store.actions[index]
        float_or_long = lambda a: a.astype(np.float32 if a.dtype.kind == "f" else np.int64)  # noqa: E731
        return WindowBatch(
            observations=torch.from_numpy(float_or_long(obs)),  # (B, K, *obs)
            actions=torch.from_numpy(float_or_long(actions)),  # (B, K, *act)
            rewards=torch.from_numpy(store.rewards[index].astype(np.float32)),
            returns_to_go=torch.zeros(index.shape, dtype=torch.float32),
            timesteps=torch.from_numpy(index - first[:, None]),
            mask=torch.from_numpy(wanted == index),
        )

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


def make_sampler(config: DiffusionConfig, store: Any, seed: int) -> DiffusionWindowSampler:
    """Reference-padded windows of `horizon` steps."""
    return DiffusionWindowSampler(
        store, config.horizon, config.obs_horizon, config.action_horizon, config.batch_size, seed
    )


def budget_warnings(config: DiffusionConfig, steps: int) -> list[str]:
    """A warm-up over most of the run, or a cosine decay that ends elsewhere than the run."""
    lines = warmup_warnings(config.warmup_steps, steps)
    if config.lr_decay_steps is not None and config.lr_decay_steps != steps:
        lines.append(
            f"agent.lr_decay_steps={config.lr_decay_steps} but the run has {steps} updates: the "
            f"cosine decay ends {'before' if config.lr_decay_steps < steps else 'after'} it; set "
            f"--set agent.lr_decay_steps={steps}"
        )
    return lines


# ---- export (`seqrl export`: the denoising loop unrolled, history and queue as state) -----------
class DiffusionStep(ExportStep):
    """The receding-horizon policy as one exportable step, DDIM (eta 0) unrolled.

    State per env: `history` (To, *obs_shape) raw observations, `started` (the history holds
    this episode's observations), `queue` (Ta, *act_shape) the planned actions in env units and
    `queue_pos` (the next one to execute; Ta = empty). Input `noise` (B, Tp, A): the starting
    sample of the chunk, read only in the rows whose queue is empty. Every call denoises a chunk
    for every row and `torch.where` keeps it only where the queue ran out: no data-dependent
    control flow, so the trace is exact, at the price of `inference_steps` denoiser calls per
    step (see `docs/readme/export.md`). The scheduler's coefficients are constants (buffers)
    computed by diffusers' `DDIMScheduler` at export time; `chunk` is the DDIM update as tensor
    math, op for op as `DDIMScheduler.step` with eta = 0 and x0 clipped (epsilon or sample
    prediction). `action_horizon` overrides the agent's Ta (the policy option of that name).
    """

    def __init__(
        self, model: DiffusionModel, scheduler: Any, action_horizon: int | None = None
    ) -> None:
        super().__init__(model.spec)
        config = model.config
        self.model = model
        self.obs_horizon, self.horizon = config.obs_horizon, config.horizon
        self.action_horizon = action_horizon or config.action_horizon
        self.noise_shape = (config.horizon, model.spec.action_dim)
        timesteps, coefficients = ddim_coefficients(scheduler)
        self.register_buffer("timesteps", timesteps)  # (S,) int64
        self.register_buffer("coefficients", coefficients)  # (S, 4) float32
        self.predicts_sample = scheduler.config.prediction_type == "sample"
        clip = scheduler.config.clip_sample
        self.clip = float(scheduler.config.clip_sample_range) if clip else None
        self.description = (
            f"Diffusion Policy ({config.denoiser}), DDIM with {len(timesteps)} denoising steps "
            f"unrolled (eta 0), To={config.obs_horizon}, Tp={config.horizon}, "
            f"Ta={self.action_horizon}; every call denoises a chunk for every env and keeps it "
            "where state.queue_pos == Ta (the queue ran out)"
        )
        self.meanings = {
            "history": "the last To observations (raw), oldest first",
            "started": "False until the first step of an episode (that step fills the history)",
            "queue": "the actions still to execute from the last chunk (env units / indices)",
            "queue_pos": f"index of the next queued action; {self.action_horizon} (Ta) = "
            "empty: this step samples a chunk from `noise`",
        }

    def initial_row(self) -> dict[str, Tensor]:
        spec = self.spec
        dtype = torch.long if spec.discrete else torch.float32
        return {
            "history": torch.zeros((self.obs_horizon, *spec.obs_shape)),
            "started": torch.zeros((), dtype=torch.bool),
            "queue": torch.zeros((self.action_horizon, *spec.action_shape), dtype=dtype),
            "queue_pos": torch.full((), self.action_horizon, dtype=torch.long),
        }

    def chunk(self, history: Tensor, noise: Tensor) -> Tensor:
        """history (B, To, *obs_shape) raw, noise (B, Tp, A) -> the DDIM chunk (B, Tp, A) in
        model units, as `DiffusionModel.sample` with this step's DDIM scheduler."""
        cond = self.model.condition(history)  # (B, To, C)
        sample = noise
        for i in range(self.timesteps.shape[0]):  # unrolled: S denoiser calls
            sqrt_alpha, sqrt_beta, sqrt_alpha_prev, direction = self.coefficients[i]
            output = self.model.denoiser(sample, self.timesteps[i], cond)  # (B, Tp, A)
            if self.predicts_sample:
                original, epsilon = output, (sample - sqrt_alpha * output) / sqrt_beta
            else:
                epsilon, original = output, (sample - sqrt_beta * output) / sqrt_alpha
            if self.clip is not None:
                original = original.clamp(-self.clip, self.clip)
            sample = sqrt_alpha_prev * original + direction * epsilon
        return sample

    def forward(self, obs: Tensor, reward: Tensor, *inputs: Tensor) -> tuple[Tensor, ...]:
        """obs (B, *obs_shape), reward (B,) unused, state..., noise (B, Tp, A) -> (action
        (B, *act_shape), *next_state)."""
        state, noise = self.unpack(inputs[:-1]), inputs[-1]
        history, queue, position = state["history"], state["queue"], state["queue_pos"]
        started = state["started"].reshape(-1, *[1] * (history.dim() - 1))
        pushed = torch.cat([history[:, 1:], obs[:, None]], dim=1)  # (B, To, *obs)
        history = torch.where(started, pushed, obs[:, None].expand_as(history))
        chunk = self.chunk(history, noise)  # (B, Tp, A)
        first = self.obs_horizon - 1
        planned = self.model.to_env(chunk[:, first : first + self.action_horizon])  # (B, Ta, *act)
        replan = position >= self.action_horizon  # (B,)
        rows = replan.reshape(-1, *[1] * (queue.dim() - 1))
        queue = torch.where(rows, planned.to(queue.dtype), queue)
        position = torch.where(replan, torch.zeros_like(position), position)
        index = position.reshape(-1, 1, *[1] * (queue.dim() - 2)).expand_as(queue[:, :1])
        action = torch.gather(queue, 1, index).squeeze(1)  # (B, *act)
        next_state = {
            "history": history,
            "started": torch.ones_like(state["started"]),
            "queue": queue,
            "queue_pos": position + 1,
        }
        return (action, *self.pack(next_state))


def ddim_coefficients(scheduler: Any) -> tuple[Tensor, Tensor]:
    """diffusers' DDIMScheduler (timesteps set, epsilon or sample prediction, eta 0) as constants:
    timesteps (S,) int64 and per step (sqrt(a_t), sqrt(1 - a_t), sqrt(a_prev), sqrt(1 - a_prev))
    (S, 4) float32, computed with the scheduler's own tensors and formulas (`step`)."""
    config = scheduler.config
    if config.prediction_type not in PREDICTION_TYPES or config.thresholding:
        raise ValueError(
            f"diffusion export supports {PREDICTION_TYPES} prediction without thresholding; the "
            f"scheduler has prediction_type={config.prediction_type!r}, thresholding={config.thresholding}"
        )
    stride = config.num_train_timesteps // scheduler.num_inference_steps
    rows = []
    for t in scheduler.timesteps.tolist():
        alpha = scheduler.alphas_cumprod[t]
        prev = t - stride
        alpha_prev = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
        rows.append(
            torch.stack([alpha**0.5, (1 - alpha) ** 0.5, alpha_prev**0.5, (1 - alpha_prev) ** 0.5])
        )
    return scheduler.timesteps.clone().long(), torch.stack(rows).float()


def export_step(agent: DiffusionAgent, options: DiffusionPolicyOptions) -> DiffusionStep:
    """The policy `agent.policy(1, scheduler="ddim", inference_steps=N)` runs, as one step with the
    N DDIM steps unrolled (the EMA weights); DDPM (noise at every step) is refused."""
    if options.scheduler != "ddim":
        raise ValueError(
            f"diffusion: export unrolls a fixed number of DDIM steps; policy.scheduler is "
            f"{options.scheduler!r} (DDPM draws noise at each of its "
            f"{options.inference_steps or agent.config.train_timesteps} steps). Export with "
            "--policy scheduler=ddim --policy inference_steps=N (e.g. N=10; the same weights)"
        )
    scheduler = noise_scheduler(agent.config, "ddim", options.inference_steps)
    return DiffusionStep(agent.ema_model, scheduler, executed_actions(agent.config, options))


ENTRY = AgentEntry(
    name="diffusion",
    summary="Diffusion Policy: DDPM-trained action chunks, DDPM/DDIM sampling, receding horizon",
    loop=Loop.OFFLINE,
    config_cls=DiffusionConfig,
    agent_cls=DiffusionAgent,
    policy_cls=DiffusionPolicy,
    options_cls=DiffusionPolicyOptions,
    tiny_config={
        "horizon": 8,
        "action_horizon": 4,
        "down_dims": [16, 32],
        "groups": 4,
        "step_embed_dim": 16,
        "train_timesteps": 10,
        "warmup_steps": 1,
        "batch_size": 8,
    },
    example_batch=lambda agent, seed: example_window_batch(
        agent.spec, context=agent.config.horizon, seed=seed
    ),
    make_sampler=make_sampler,
    export_step=export_step,
    budget_warnings=budget_warnings,
)
