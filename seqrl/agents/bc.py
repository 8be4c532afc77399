"""Recurrent behaviour cloning: imitate the dataset's actions from the observation history.

Behaviour cloning (Pomerleau 1989) with a sequence backbone, as robomimic's BC-RNN and the
sequence BC baselines of the Decision Transformer paper: windows of K consecutive observations
are embedded (plus a learned timestep embedding), read by any seqrl backbone by name (gpt, gtrxl,
lstm, gru, xlstm, mlp) and a head predicts the action at every step:

```
  token      s_1   s_2   ...   s_K        (normalized observation + timestep embedding)
  backbone    |     |           |         causal: a_t^ sees s_1..s_t of the window
  head       a_1^  a_2^  ...   a_K^       loss on every real (unpadded) step
```

Heads: `deterministic` (tanh in [-1, 1] model units, MSE) or `gaussian` (tanh mean and a
state-dependent log std, negative log-likelihood; acting takes the mean, or samples with
`explore=True`). Discrete actions always get a categorical head (cross-entropy; argmax, or a sample
with `explore=True`).

Inference (`policy(..., inference=...)`):
- `"step"` (default): one token per env step through the backbone's incremental `step`, O(1)
  (recurrent) or O(window) per step. Exactly the parallel forward over the whole episode so far
  (tested), so for the recurrent backbones the memory spans the episode, not just K steps.
- `"chunk"`: step mode with the state of every env made fresh every K steps (robomimic's
  `rnn_horizon` reset): step t of an episode sees steps K*floor(t/K)..t, as the prediction at
  position t mod K of a training window does, so it is the trained function at step mode's cost,
  with less context than window mode in the first steps of each chunk:

  ```
  episode step  0 1 2 3 4 5 | 6 7 8 9 10 11 | 12 ...     K = 6
  state         fresh ----> | fresh ------> | fresh ...
  step 8 sees         6 7 8       (window mode: 3 4 5 6 7 8)
  ```
- `"window"`: recompute the last K steps from a fresh state at every step: exactly the function
  trained on K-step windows, with the whole K steps before every prediction, at K times the cost.

What differs from robomimic's BC-RNN: no GMM head; its periodic hidden-state reset is
`inference="chunk"`, not the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqrl.agents.examples import example_window_batch
from seqrl.agents.export_step import (
    ExportStep,
    backbone_rows,
    backbone_state,
    memory_rows,
)
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
from seqrl.nn import make_backbone
from seqrl.nn.heads import ActionScaling
from seqrl.nn.optim import WarmupAdamW

HEADS = ("deterministic", "gaussian")
LOG_STD_RANGE = (-5.0, 2.0)


@dataclass
class BCConfig:
    """Recurrent behaviour-cloning settings."""

    backbone: str = "lstm"
    """Sequence backbone: gpt | gtrxl | lstm | gru | xlstm | mlp."""
    head: str = "deterministic"
    """Continuous actions: "deterministic" (MSE) or "gaussian" (NLL). Discrete: categorical."""
    context_len: int = 20
    """K: timesteps per training window (and per inference window in `inference="window"`)."""
    width: int = 128
    """Embedding width D."""
    layers: int = 3
    """Backbone layers."""
    heads: int = 1
    """Attention heads (gpt, gtrxl) / cell heads (xlstm)."""
    dropout: float = 0.1
    """Dropout in the embedding and the backbone."""
    attention_window: int | None = None
    """gpt: sliding attention window in steps (None: full causal over `max_timestep` steps);
    gtrxl: its memory (None: `context_len`, what a training window holds)."""
    max_timestep: int = 1000
    """Size of the timestep embedding (later steps use the last entry) and of a full-causal
    attention cache."""
    lr: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up, in updates."""
    grad_clip: float = 0.25
    """Max global gradient norm."""
    batch_size: int = 64
    """Windows per update."""
    device: str = "cpu"
    """Torch device for training and inference."""

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"agent.head must be one of {', '.join(HEADS)}; got {self.head!r}")
        for name in ("context_len", "width", "layers", "max_timestep", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"agent.{name} must be >= 1, got {getattr(self, name)}")


INFERENCE_MODES = ("step", "chunk", "window")


@dataclass
class BCPolicyOptions:
    """Options of a BC policy (`--policy inference=window`)."""

    inference: str = "step"
    """"step": incremental, state over the whole episode; "chunk": incremental, state made fresh
    every K steps; "window": recompute the last K steps (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.inference not in INFERENCE_MODES:
            raise ValueError(
                f"policy.inference must be one of {', '.join(INFERENCE_MODES)}, got "
                f"{self.inference!r}"
            )


class BCModel(nn.Module):
    """Observation normalization + embeddings + backbone + action head."""

    def __init__(self, config: BCConfig, spec: EnvSpec, stats: DataStats | None = None) -> None:
        super().__init__()
        self.config, self.spec = config, spec
        self.obs_dim = int(np.prod(spec.obs_shape)) if spec.obs_shape else 1
        stats = stats or {}
        mean = stats.get("observation_mean", np.zeros(self.obs_dim))
        std = stats.get("observation_std", np.ones(self.obs_dim))
        self.register_buffer("obs_mean", torch.as_tensor(mean, dtype=torch.float32).reshape(-1))
        self.register_buffer("obs_std", torch.as_tensor(std, dtype=torch.float32).reshape(-1))
        width = config.width
        self.embed_state = nn.Linear(self.obs_dim, width)
        self.embed_timestep = nn.Embedding(config.max_timestep, width)
        self.embed_ln = nn.LayerNorm(width)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.backbone = make_backbone(
            config.backbone,
            width=width,
            layers=config.layers,
            heads=config.heads,
            dropout=config.dropout,
            window=bc_memory(config),
            max_len=config.max_timestep,
        )
        gaussian = config.head == "gaussian" and not spec.discrete
        self.action_head = nn.Linear(width, spec.action_dim * (2 if gaussian else 1))
        if not spec.discrete:
            self.action_scaling = ActionScaling(spec.action_dim, spec.action_low, spec.action_high)
        nn.init.normal_(self.embed_timestep.weight, std=0.02)

    def tokens(self, observations: Tensor, timesteps: Tensor) -> Tensor:
        """(B, T, *obs_shape) raw observations, (B, T) timesteps -> tokens (B, T, D)."""
        batch, time = timesteps.shape
        obs = observations.reshape(batch, time, self.obs_dim).float()
        obs = (obs - self.obs_mean) / self.obs_std
        steps = timesteps.clamp(0, self.config.max_timestep - 1)
        tokens = self.embed_state(obs) + self.embed_timestep(steps)
        return self.embed_dropout(self.embed_ln(tokens))

    def head(self, hidden: Tensor) -> tuple[Tensor, Tensor | None]:
        """(mean in model units, or logits; log std for the Gaussian head else None)."""
        out = self.action_head(hidden)
        if self.spec.discrete:
            return out, None
        if out.shape[-1] == self.spec.action_dim:
            return torch.tanh(out), None
        mean, log_std = out.chunk(2, dim=-1)
        return torch.tanh(mean), log_std.clamp(*LOG_STD_RANGE)

    def forward(
        self, observations: Tensor, timesteps: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Parallel face: heads at every step (B, T, A) from a fresh state."""
        hidden, _ = self.backbone(
            self.tokens(observations, timesteps), mask=mask, return_state=False
        )
        return self.head(hidden)

    def act(self, prediction: Tensor, log_std: Tensor | None, explore: bool) -> Tensor:
        """Head output (N, A) -> env action (N, *act_shape)."""
        if self.spec.discrete:
            if explore:
                return torch.multinomial(torch.softmax(prediction, -1), 1).squeeze(-1)
            return prediction.argmax(-1)
        if explore and log_std is not None:
            prediction = prediction + log_std.exp() * torch.randn_like(prediction)
        return self.action_scaling.to_env(prediction, clip=True)


def bc_memory(config: BCConfig) -> int | None:
    """The backbone's window: `attention_window`, or for GTrXL the training window's length
    (a memory of `max_timestep` entries would cost every step ~50x more for nothing trained)."""
    if config.attention_window is None and config.backbone == "gtrxl":
        return config.context_len
    return config.attention_window


def bc_loss(model: BCModel, batch: WindowBatch) -> tuple[Tensor, dict[str, float]]:
    """Masked cross-entropy (discrete), MSE (deterministic) or Gaussian NLL, in model units."""
    prediction, log_std = model(batch.observations, batch.timesteps, batch.mask)  # (B, K, A)
    valid = batch.mask
    if model.spec.discrete:
        target = batch.actions.long()[valid]
        loss = F.cross_entropy(prediction[valid], target)
        accuracy = (prediction[valid].argmax(-1) == target).float().mean()
        return loss, {"train/loss": loss.item(), "train/action_accuracy": accuracy.item()}
    target = model.action_scaling.to_model(batch.actions.float())[valid]  # (V, A)
    mean = prediction[valid]
    mse = F.mse_loss(mean, target)
    if log_std is None:
        return mse, {"train/loss": mse.item()}
    std_log = log_std[valid]
    nll = (0.5 * ((target - mean) / std_log.exp()) ** 2 + std_log).sum(-1).mean()
    nll = nll + 0.5 * math.log(2 * math.pi) * model.spec.action_dim
    metrics = {"train/loss": nll.item(), "train/mse": mse.item()}
    metrics["train/std_mean"] = std_log.exp().mean().item()
    return nll, metrics


class BCAgent:
    """The BC agent: model, AdamW with linear warm-up, `update(WindowBatch)`, `policy()`."""

    def __init__(self, config: BCConfig, spec: EnvSpec, stats: DataStats | None = None) -> None:
        self.config, self.spec = config, spec
        self.device = torch.device(config.device)
        self.model = BCModel(config, spec, stats).to(self.device)
        self.optim = WarmupAdamW.from_config(self.model.parameters(), config)

    def update(self, batch: WindowBatch) -> dict[str, float]:
        self.model.train()
        loss, metrics = bc_loss(self.model, batch.to(self.device))
        metrics["train/grad_norm"], metrics["train/lr"] = self.optim.step(loss)
        return metrics

    def policy(self, num_envs: int = 1, *, explore: bool = False, **options: Any) -> BCPolicy:
        """A batched policy; `explore` samples from the Gaussian / categorical head."""
        chosen = policy_options(BCPolicyOptions, options)
        return BCPolicy(self.model, num_envs, explore, chosen.inference)

    @property
    def updates(self) -> int:
        """Gradient updates so far."""
        return self.optim.updates

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), **self.optim.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state)


class BCPolicy:
    """Batched BC rollouts over N envs: per-env timestep and backbone state (or window)."""

    def __init__(
        self, model: BCModel, num_envs: int, explore: bool = False, inference: str = "step"
    ) -> None:
        self.model, self.num_envs, self.explore = model, num_envs, explore
        self.inference = inference
        self.device = next(model.parameters()).device
        n, k, dev = num_envs, model.config.context_len, self.device
        self.timestep = torch.zeros(n, dtype=torch.long, device=dev)  # (N,)
        self.state = model.backbone.initial_state(n, dev) if inference != "window" else None
        self.obs_context = torch.zeros((n, k, *model.spec.obs_shape), device=dev)  # (N, K, *obs)
        self.time_context = torch.zeros((n, k), dtype=torch.long, device=dev)  # (N, K)
        self.valid = torch.zeros(n, dtype=torch.long, device=dev)  # (N,) steps in the window

    def reset(self, done: np.ndarray | Tensor | None = None) -> None:
        rows = env_rows(done, self.num_envs, self.device)
        self.timestep[rows] = 0
        self.valid[rows] = 0
        self.obs_context[rows] = 0
        self.time_context[rows] = 0
        if self.state is not None:
            self.state = self.model.backbone.reset_state(self.state, rows)

    @torch.no_grad()
    def act(
        self, obs: np.ndarray | Tensor, reward: np.ndarray | Tensor | None = None
    ) -> PolicyStep:
        """`reward` is accepted for the common signature and unused."""
        obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)
        check_observations("BCPolicy", obs_t, self.model.spec.obs_shape, self.num_envs)
        if self.model.training:  # acting is inference; `update` switches to train() itself
            self.model.eval()
        if self.inference == "chunk":  # a fresh state at steps K, 2K, ... of each episode
            k = self.model.config.context_len
            restart = (self.timestep > 0) & (self.timestep % k == 0)  # (N,)
            if bool(restart.any()):
                self.state = self.model.backbone.reset_state(self.state, restart)
        if self.inference != "window":
            tokens = self.model.tokens(obs_t[:, None], self.timestep[:, None])  # (N, 1, D)
            hidden, self.state = self.model.backbone.step(tokens, self.state)
            prediction, log_std = self.model.head(hidden[:, -1])
        else:
            prediction, log_std = self._act_window(obs_t)
        self.timestep += 1
        self.last_prediction = prediction  # (N, A) model units / logits, for tests
        return PolicyStep(action=self.model.act(prediction, log_std, self.explore))

    def _act_window(self, obs: Tensor) -> tuple[Tensor, Tensor | None]:
        """Left-padded last K steps, recomputed from a fresh state."""
        k = self.model.config.context_len
        self.obs_context.copy_(torch.roll(self.obs_context, shifts=-1, dims=1))
        self.time_context.copy_(torch.roll(self.time_context, shifts=-1, dims=1))
        self.obs_context[:, -1] = obs
        self.time_context[:, -1] = self.timestep
        self.valid = (self.valid + 1).clamp(max=k)
        positions = torch.arange(k, device=self.device)
        mask = positions[None, :] >= (k - self.valid)[:, None]  # (N, K)
        prediction, log_std = self.model(self.obs_context, self.time_context, mask)
        return prediction[:, -1], None if log_std is None else log_std[:, -1]


def make_sampler(config: BCConfig, store: Any, seed: int) -> Any:
    """Windows of `context_len` steps (returns-to-go unused)."""
    from seqrl.buffers.samplers import WindowSampler

    return WindowSampler(
        store,
        context_len=config.context_len,
        batch_size=config.batch_size,
        seed=seed,
        max_timestep=config.max_timestep - 1,
    )


# ---- export (`seqrl export`: one pure step, the backbone state as explicit state) ---------------
class BCStep(ExportStep):
    """`inference="step"` as one exportable step (the mean / argmax action, clipped into the
    Box); state: the timestep and the backbone's state. `reward` is taken and unused."""

    def __init__(self, model: BCModel) -> None:
        super().__init__(model.spec)
        self.model = model
        self.description = f"behaviour cloning ({model.config.backbone}), inference='step'"
        self.meanings = {"timestep": "steps taken this episode (the timestep embedding's index)"}

    def initial_row(self) -> dict[str, Tensor]:
        timestep = torch.zeros((), dtype=torch.long)
        return {"timestep": timestep, **backbone_rows(self.model.backbone)}

    def forward(self, obs: Tensor, reward: Tensor, *state_in: Tensor) -> tuple[Tensor, ...]:
        """obs (B, *obs_shape), reward (B,), state -> (action (B, *act_shape), *next_state)."""
        state = self.unpack(state_in)
        timestep = state["timestep"]  # (B,)
        tokens = self.model.tokens(obs[:, None], timestep[:, None])  # (B, 1, D)
        hidden, memory = self.model.backbone.step(tokens, backbone_state(state))
        prediction, log_std = self.model.head(hidden[:, -1])
        action = self.model.act(prediction, log_std, explore=False)
        return (action, *self.pack({"timestep": timestep + 1, **memory_rows(memory)}))


def export_step(agent: BCAgent, options: BCPolicyOptions) -> BCStep:
    """The step `agent.policy(1, inference="step")` runs, for `seqrl export`."""
    if options.inference != "step":
        raise ValueError(
            f"bc: export covers inference='step' only, got {options.inference!r}; export with "
            "--policy inference=step (the same weights; state over the whole episode, not "
            f"{options.inference} mode's)"
        )
    return BCStep(agent.model)


ENTRY = AgentEntry(
    name="bc",
    summary="recurrent behaviour cloning over any backbone on a trajectory dataset",
    loop=Loop.OFFLINE,
    config_cls=BCConfig,
    agent_cls=BCAgent,
    policy_cls=BCPolicy,
    options_cls=BCPolicyOptions,
    tiny_config={"backbone": "gru", "width": 16, "layers": 2, "context_len": 6, "head": "gaussian"},
    example_batch=lambda agent, seed: example_window_batch(
        agent.spec, context=agent.config.context_len, seed=seed
    ),
    make_sampler=make_sampler,
    export_step=export_step,
    budget_warnings=lambda config, steps: warmup_warnings(config.warmup_steps, steps),
)
