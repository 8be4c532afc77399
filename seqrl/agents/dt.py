"""Decision Transformer (Chen et al. 2021, "Decision Transformer: Reinforcement Learning via
Sequence Modeling").

Returns-to-go, states and actions of the last K steps are embedded, each plus a learned timestep
embedding, interleaved as (R_1, s_1, a_1, R_2, s_2, a_2, ...), layer-normed and read by a causal
sequence backbone; the action a_t is predicted from the output at token s_t. Defaults are the
reference Gym settings (context 20, width 128, 3 layers, 1 head, dropout 0.1, ReLU, AdamW 1e-4,
weight decay 1e-4, 10k linear warmup, grad clip 0.25, batch 64, return scale 1000).

What differs from the reference code:
- The backbone is chosen by name (`seqrl.nn.make_backbone`): GPT by default, or GTrXL, LSTM, GRU,
  xLSTM ("a DT with an xLSTM backbone" is one config value).
- Observation normalization (dataset mean/std) and action scaling to [-1, 1] live inside the
  model as buffers, so they are saved with the weights and a loaded policy needs nothing else.
- `DTPolicy` is batched over environments. `inference="window"` recomputes the left-padded last
  K steps at every step (the reference `get_action` semantics); `inference="cache"` feeds the
  previous action and the new (R, s) pair, 3 tokens, through the backbone's incremental `step`.
  The two are the same function only when every output the cache computes depends on no more
  tokens than a training window holds (see "Cache mode" below); `DTConfig` and `DTPolicy` refuse
  the rest with a message that names the fix.
- The last backbone layer computes outputs at the state tokens only (the loss reads nothing
  else); keys and values at every token, as the next tokens need them.
- Discrete action spaces get a categorical head and cross-entropy loss.

Tokens and what reads them (K steps, 3K tokens; the loss reads the outputs at s_t only):

```
  token   R_1  s_1  a_1  R_2  s_2  a_2 ...  R_K  s_K  a_K
  output        |              |                  |
              a_1^           a_2^               a_K^      (tanh, model units; logits if discrete)
```

Cache mode. With a sliding window of W steps (3W tokens: each token sees itself and 3W-1 before
it) and L layers, the output at s_t depends on tokens up to L(3W-1) back. In a training window
the last state token s_K has 3K-2 tokens before it, so when L(3W-1) <= 3K-2 the training window
held everything that output depends on: recomputing the window (the reference) and stepping a
cache over the whole episode give the same action at every step. Otherwise the two differ from
step K on (the shipped K=40, W=20, L=3 preset did: 4.5e-3). GTrXL is the same with its memory
M = 3W-1 tokens (3K-1 without a window, which never qualifies). A full-causal cache attends to
the whole episode, LSTM/GRU/xLSTM carry a state over it: neither is what K-step windows from a
fresh state trained, so cache mode is refused for them.

```
  act(t) in cache mode, one backbone step of 3 tokens per env:
     [a_{t-1}, R_t, s_t] -> step -> output at s_t -> a_t^    (a_{t-1} waits for the next act;
                                                              at an episode start: [R_0, s_0])
```
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
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
from seqrl.nn.attention import Dropout
from seqrl.nn.base import forward_selected, selects
from seqrl.nn.heads import ActionScaling
from seqrl.nn.optim import WarmupAdamW


@dataclass
class DTConfig:
    """Decision Transformer settings (defaults: the reference Gym experiments)."""

    context_len: int = 20
    """K: timesteps per training window and per inference window."""
    width: int = 128
    """Embedding width D."""
    layers: int = 3
    """Backbone layers."""
    heads: int = 1
    """Attention heads (attention backbones)."""
    dropout: float = 0.1
    """Dropout in embeddings and backbone."""
    activation: str = "relu"
    """MLP activation in the backbone (the reference DT uses ReLU)."""
    backbone: str = "gpt"
    """Sequence backbone: gpt | gtrxl | lstm | gru | xlstm."""
    attention_window: int | None = None
    """Sliding attention window in timesteps (3 tokens each); None = full causal attention over
    the context. Set it (with `context_len` > it) to train a model whose `inference="cache"`
    rollouts are exact."""
    max_timestep: int = 1000
    """Size of the timestep embedding; later timesteps use the last entry."""
    timestep_init_std: float | None = 0.02
    """Std of the timestep embedding's initial weights; None keeps PyTorch's N(0, 1) (what the
    reference code does). 0.02 (as d3rlpy) learned faster on the shared Hopper medium data:
    29.5 ± 1.0 vs 28.4 ± 0.3 normalized after 1000 updates, 3 seeds
    (experiments/results/dt/timestep_init.md)."""
    lr: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_steps: int = 10_000
    """Linear learning-rate warmup, in updates."""
    grad_clip: float = 0.25
    """Max global gradient norm."""
    batch_size: int = 64
    """Windows per update."""
    return_scale: float = 1000.0
    """Returns-to-go are divided by this before embedding."""
    device: str = "cpu"
    """Torch device for training and inference."""
    precision: str = "auto"
    """"auto" (bf16 where the hardware has fast bf16 matmuls, detected: CPUs with AVX512-BF16 or
    AMX, CUDA GPUs that support it; fp32 elsewhere), "fp32", or "bf16": bfloat16 autocast for
    matmuls in updates and rollouts (weights and optimizer stay fp32). bf16 was 1.6x faster per
    update on an AMD EPYC with AVX512-BF16, and 2.4x slower on a Xeon without it."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"agent.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.context_len < 1:
            raise ValueError(f"agent.context_len must be >= 1, got {self.context_len}")
        window = self.attention_window
        if window is None:
            return
        if window < 1:
            raise ValueError(f"agent.attention_window must be >= 1 or None, got {window}")
        if self.backbone not in ATTENTION_BACKBONES:
            raise ValueError(
                f"agent.attention_window={window} applies to the gpt and gtrxl backbones, not "
                f"agent.backbone={self.backbone!r}; remove it."
            )
        reach, seen = self.layers * (3 * window - 1), 3 * self.context_len - 2
        if reach > seen:
            longest = ((seen // self.layers) + 1) // 3
            fixes = f"agent.context_len >= {-(-(reach + 2) // 3)}"
            if longest >= 1:
                fixes += f" or agent.attention_window <= {longest}"
            raise ValueError(
                f"agent.attention_window={window} with agent.layers={self.layers}: an output "
                f"depends on up to layers*(3*window-1) = {reach} tokens back, but the last state "
                f"token of a {self.context_len}-step training window has {seen} before it, so "
                f"cache inference would not be the trained function. Set {fixes}."
            )


PRECISIONS = ("auto", "fp32", "bf16")
ATTENTION_BACKBONES = ("gpt", "gtrxl")
STATELESS_BACKBONES = ("mlp",)


def cache_inference_problem(config: DTConfig) -> str | None:
    """Why `inference="cache"` would not compute the trained function for `config`, and the
    fix; None when it does (see "Cache mode" in the module docstring)."""
    if config.backbone in STATELESS_BACKBONES:
        return None
    use_window = "use policy.inference=window (the reference evaluation)"
    if config.backbone not in ATTENTION_BACKBONES:
        return (
            f"agent.backbone={config.backbone!r} carries a recurrent state over the whole episode "
            f"in cache mode, but was trained on {config.context_len}-step windows from a fresh "
            f"state: a different function. {use_window[0].upper()}{use_window[1:]}."
        )
    if config.attention_window is None:
        longest = ((3 * config.context_len - 2) // config.layers + 1) // 3
        train = (
            f", or train with agent.attention_window <= {longest}"
            if longest >= 1
            else ", or train with a sliding window (agent.attention_window)"
        )
        return (
            "agent.attention_window is None: a cache attends to the whole episode, but the model "
            f"was trained on {config.context_len}-step windows. Either {use_window}{train}."
        )
    return None  # DTConfig checked the receptive field


INFERENCE_MODES = ("window", "cache")


@dataclass
class DTPolicyOptions:
    """Options of a DT policy: `seqrl eval RUN --policy target_return=1800 --policy
    inference=cache`, `--set policy.inference=cache` when training, or `agent.policy(...)`."""

    target_return: float = 3600.0
    """Return to condition on, in env units (reference Hopper: 3600)."""
    inference: str = "window"
    """Rollout mode: "window" (reference: recompute the last K steps) or "cache" (3 tokens per
    step through the backbone's cache; allowed where it is the trained function: a gpt or gtrxl
    model trained with `agent.attention_window`, or the memoryless mlp)."""

    def __post_init__(self) -> None:
        if self.inference not in INFERENCE_MODES:
            raise ValueError(
                f"policy.inference must be 'window' or 'cache', got {self.inference!r}"
            )


class DecisionTransformerModel(nn.Module):
    """Embeddings + backbone + action head. Inputs are raw observations and env-unit actions."""

    def __init__(
        self,
        config: DTConfig,
        spec: EnvSpec,
        obs_mean: np.ndarray | None = None,
        obs_std: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.config, self.spec = config, spec
        width = config.width
        obs_dim = int(np.prod(spec.obs_shape)) if spec.obs_shape else 1
        self.obs_dim = obs_dim
        mean = np.zeros(obs_dim) if obs_mean is None else np.asarray(obs_mean).reshape(obs_dim)
        std = np.ones(obs_dim) if obs_std is None else np.asarray(obs_std).reshape(obs_dim)
        self.register_buffer("obs_mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("obs_std", torch.as_tensor(std, dtype=torch.float32))
        if not spec.discrete:  # the tanh head's [-1, 1] maps onto the box (unbounded: as is)
            self.action_scaling = ActionScaling(spec.action_dim, spec.action_low, spec.action_high)

        self.embed_return = nn.Linear(1, width)
        self.embed_state = nn.Linear(obs_dim, width)
        if spec.discrete:
            self.embed_action: nn.Module = nn.Embedding(spec.action_dim, width)
        else:
            self.embed_action = nn.Linear(spec.action_dim, width)
        self.embed_timestep = nn.Embedding(config.max_timestep, width)
        self.embed_ln = nn.LayerNorm(width)
        self.embed_dropout = Dropout(config.dropout)
        token_window = None if config.attention_window is None else 3 * config.attention_window
        extra: dict[str, Any] = {}
        if config.backbone == "gpt":
            extra["step_tokens"] = 3  # cache mode steps [a_{t-1}, R_t, s_t]
        elif config.backbone == "gtrxl":  # memory M: the 3W-1 (or 3K-1) tokens before a token
            token_window = (token_window or 3 * config.context_len) - 1
        self.backbone = make_backbone(
            config.backbone,
            width=width,
            layers=config.layers,
            heads=config.heads,
            dropout=config.dropout,
            window=token_window,
            max_len=3 * config.max_timestep,
            activation=config.activation,
            **extra,
        )
        self.action_head = nn.Linear(width, spec.action_dim)
        if config.timestep_init_std is not None:  # last, so other inits draw the same numbers
            nn.init.normal_(self.embed_timestep.weight, std=config.timestep_init_std)

    # ---- embedding -------------------------------------------------------------------------
    def normalize_actions(self, actions: Tensor) -> Tensor:
        """Env-unit actions -> model units ([-1, 1] on bounded dims); discrete: unchanged."""
        if self.spec.discrete:
            return actions.long()
        return self.action_scaling.to_model(actions)

    def _embed_steps(
        self, returns_to_go: Tensor, observations: Tensor, timesteps: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Return and state tokens, each (B, T, D), timestep embedding added."""
        batch, time = timesteps.shape
        time_emb = self.embed_timestep(timesteps.clamp(0, self.config.max_timestep - 1))
        obs = observations.reshape(batch, time, self.obs_dim).float()  # (B, T, obs_dim)
        obs = (obs - self.obs_mean) / self.obs_std
        return_tokens = self.embed_return(returns_to_go.unsqueeze(-1).float()) + time_emb
        state_tokens = self.embed_state(obs) + time_emb
        return return_tokens, state_tokens

    def _embed_actions(self, actions: Tensor, timesteps: Tensor) -> Tensor:
        """Action tokens (B, T, D); `actions` are already in model units."""
        time_emb = self.embed_timestep(timesteps.clamp(0, self.config.max_timestep - 1))
        return self.embed_action(actions) + time_emb

    def _finish_tokens(self, tokens: Tensor) -> Tensor:
        return self.embed_dropout(self.embed_ln(tokens))

    def _head(self, hidden: Tensor) -> Tensor:
        """Action predictions in model units: tanh (continuous) or logits (discrete)."""
        out = self.action_head(hidden)
        return out if self.spec.discrete else torch.tanh(out)

    def to_env_action(self, prediction: Tensor) -> Tensor:
        """Model output (B, A) -> env action: scaled into the Box, or the argmax index."""
        if self.spec.discrete:
            return prediction.argmax(-1)
        return self.action_scaling.to_env(prediction)

    # ---- parallel (training, window inference) --------------------------------------------
    def forward(
        self,
        observations: Tensor,
        actions: Tensor,
        returns_to_go: Tensor,
        timesteps: Tensor,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Predicted actions (B, T, A) (model units / logits) from the state tokens.

        observations (B, T, *obs_shape) raw; actions (B, T, *act_shape) in model units;
        returns_to_go (B, T) scaled; timesteps (B, T); mask (B, T) bool, False on padding.
        """
        batch, time = timesteps.shape
        return_tokens, state_tokens = self._embed_steps(returns_to_go, observations, timesteps)
        action_tokens = self._embed_actions(actions, timesteps)
        tokens = torch.stack((return_tokens, state_tokens, action_tokens), dim=2)  # (B, T, 3, D)
        tokens = self._finish_tokens(tokens.reshape(batch, 3 * time, -1))  # (B, 3T, D)
        token_mask = None if mask is None else mask.repeat_interleave(3, dim=1)  # (B, 3T)
        state_tokens = slice(1, None, 3)  # s_1, s_2, ...: what the loss and the policy read
        state_hidden, _ = forward_selected(
            self.backbone, tokens, state_tokens, mask=token_mask, return_state=False
        )  # (B, T, D)
        return self._head(state_hidden)

    # ---- incremental (cache inference) ------------------------------------------------------
    def step_state(
        self, returns_to_go: Tensor, observations: Tensor, timesteps: Tensor, state: Any
    ) -> tuple[Tensor, Any]:
        """Feed (R_t, s_t) for every env; returns predictions (B, A) and the new state."""
        return_tokens, state_tokens = self._embed_steps(
            returns_to_go[:, None], observations[:, None], timesteps[:, None]
        )
        tokens = torch.cat((return_tokens, state_tokens), dim=1)  # (B, 2, D)
        hidden, state = self.backbone.step(self._finish_tokens(tokens), state)
        return self._head(hidden[:, -1]), state

    def step_action(self, actions: Tensor, timesteps: Tensor, state: Any) -> Any:
        """Feed a_t (model units, (B, *act_shape)) so the next step can attend to it."""
        tokens = self._finish_tokens(self._embed_actions(actions[:, None], timesteps[:, None]))
        _, state = self.backbone.step(tokens, state)
        return state

    def step_tokens(
        self, tokens: Tensor, state: Any, pad: Tensor | None = None
    ) -> tuple[Tensor, Any]:
        """Feed embedded tokens (B, n, D) whose last one is s_t; returns predictions (B, A).

        `pad` (B,): leading tokens of each row to skip (rows whose episode starts at this step
        have no a_{t-1}; their state is empty), for the attention backbones' `step`."""
        tokens = self._finish_tokens(tokens)
        options: dict[str, Any] = {}
        if selects(self.backbone):  # gpt, gtrxl: the last layer at s_t only
            options["select"] = slice(-1, None)
        if pad is not None and self.config.backbone in ATTENTION_BACKBONES:
            options["pad"] = pad
        hidden, state = self.backbone.step(tokens, state, **options)
        return self._head(hidden[:, -1]), state


@functools.cache
def fast_bf16(device_type: str) -> bool:
    """True where bfloat16 matmuls are fast: a CUDA GPU that supports bf16, or a CPU with
    AVX512-BF16 or AMX (read from /proc/cpuinfo, else from torch's own CPU feature checks).
    Elsewhere bf16 is emulated and slower than fp32."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        cpu = getattr(torch._C, "_cpu", None)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def uses_bf16(config: DTConfig, device: torch.device, *, rollout: bool = False) -> bool:
    """Whether `config.precision` means bf16 autocast on `device`: "bf16" always, "auto" for
    updates where bf16 is fast. "auto" rollouts stay fp32: bf16 gave `act` no speed-up at 1 to
    100 envs (experiments/bench_rollout.py), and fp32 keeps cache, window and exported steps
    equal to float tolerance."""
    if config.precision == "auto":
        return not rollout and fast_bf16(device.type)
    return config.precision == "bf16"


def autocast(model: DecisionTransformerModel, *, rollout: bool = False) -> torch.autocast:
    """bfloat16 autocast when the model's precision means it (a no-op context otherwise)."""
    device = next(model.parameters()).device
    enabled = uses_bf16(model.config, device, rollout=rollout)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def dt_loss(model: DecisionTransformerModel, batch: WindowBatch) -> tuple[Tensor, dict[str, float]]:
    """Masked MSE (continuous, model units) or cross-entropy (discrete) on the predicted actions."""
    targets = model.normalize_actions(batch.actions)
    predictions = model(
        batch.observations, targets, batch.returns_to_go, batch.timesteps, batch.mask
    ).float()  # (B, K, A); the loss in fp32 also under bf16 autocast
    valid = batch.mask
    if model.spec.discrete:
        loss = F.cross_entropy(predictions[valid], targets[valid])
        accuracy = (predictions[valid].argmax(-1) == targets[valid]).float().mean()
        return loss, {"train/loss": loss.item(), "train/action_accuracy": accuracy.item()}
    loss = F.mse_loss(predictions[valid], targets[valid])
    return loss, {"train/loss": loss.item()}


class DTAgent:
    """The DT agent: model, AdamW with linear warmup, `update(WindowBatch)`, `policy()`.

    `stats` (dataset statistics, `EpisodeStore.stats()`) sets the observation normalization;
    None keeps the identity (as for an agent whose weights are loaded next).
    """

    def __init__(self, config: DTConfig, spec: EnvSpec, stats: DataStats | None = None) -> None:
        self.config, self.spec = config, spec
        self.device = torch.device(config.device)
        stats = stats or {}
        self.model = DecisionTransformerModel(
            config, spec, stats.get("observation_mean"), stats.get("observation_std")
        ).to(self.device)
        self.optim = WarmupAdamW.from_config(self.model.parameters(), config)

    def update(self, batch: WindowBatch) -> dict[str, float]:
        self.model.train()
        with autocast(self.model):
            loss, metrics = dt_loss(self.model, batch.to(self.device))
        metrics["train/grad_norm"], metrics["train/lr"] = self.optim.step(loss)
        return metrics

    def policy(self, num_envs: int = 1, *, explore: bool = False, **options: Any) -> DTPolicy:
        """A batched policy over `num_envs` envs; `options`: `DTPolicyOptions` fields. DT acts
        deterministically, so `explore` changes nothing."""
        chosen = policy_options(DTPolicyOptions, options)
        return DTPolicy(self.model, num_envs, chosen.target_return, chosen.inference)

    @property
    def updates(self) -> int:
        """Gradient updates so far."""
        return self.optim.updates

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), **self.optim.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state)


class DTPolicy:
    """Batched DT rollouts over N envs: per-env return-to-go, timestep and context.

    `act(obs, reward)` decrements each env's return-to-go by the reward of its previous step
    (ignored right after a reset), appends the step to the env's context and returns the action
    for it. `target_return` is in env units and may be changed between calls.
    """

    def __init__(
        self,
        model: DecisionTransformerModel,
        num_envs: int,
        target_return: float,
        inference: str = "window",
    ) -> None:
        if inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be 'window' or 'cache', got {inference!r}")
        problem = cache_inference_problem(model.config) if inference == "cache" else None
        if problem is not None:
            raise ValueError(f"policy.inference='cache' refused: {problem}")
        self.model, self.num_envs, self.inference = model, num_envs, inference
        self.target_return = target_return
        self.config, self.spec = model.config, model.spec
        self.device = next(model.parameters()).device
        n, k = num_envs, self.config.context_len
        dev = self.device
        self.returns_to_go = torch.zeros(n, device=dev)  # (N,) scaled
        self.timestep = torch.zeros(n, dtype=torch.long, device=dev)  # (N,)
        self.fresh = torch.ones(n, dtype=torch.bool, device=dev)  # (N,) reset since last act
        # window mode: left-padded context of the last K steps
        obs_shape = self.spec.obs_shape
        self.obs_context = torch.zeros((n, k, *obs_shape), device=dev)  # (N, K, *obs)
        act_shape, act_dtype = self.spec.action_shape, torch.long if self.spec.discrete else None
        self.action_context = torch.zeros((n, k, *act_shape), dtype=act_dtype, device=dev)
        self.rtg_context = torch.zeros((n, k), device=dev)  # (N, K)
        self.time_context = torch.zeros((n, k), dtype=torch.long, device=dev)  # (N, K)
        self.valid = torch.zeros(n, dtype=torch.long, device=dev)  # (N,) steps in context
        # cache mode: the backbone state, and a_{t-1} (model units), fed with the next step
        self.state = model.backbone.initial_state(n, dev) if inference == "cache" else None
        self.previous_action = torch.zeros((n, *act_shape), dtype=act_dtype, device=dev)
        self.pending = torch.zeros(n, dtype=torch.bool, device=dev)  # (N,) a_{t-1} not yet fed
        self.reset(None)

    def reset(self, done: np.ndarray | Tensor | None = None) -> None:
        rows = env_rows(done, self.num_envs, self.device)
        self.returns_to_go[rows] = self.target_return / self.config.return_scale
        self.timestep[rows] = 0
        self.fresh[rows] = True
        self.pending[rows] = False
        self.valid[rows] = 0
        for context in (self.obs_context, self.action_context, self.rtg_context, self.time_context):
            context[rows] = 0
        if self.state is not None:
            self.state = self.model.backbone.reset_state(self.state, rows)

    @torch.no_grad()
    def act(
        self, obs: np.ndarray | Tensor, reward: np.ndarray | Tensor | None = None
    ) -> PolicyStep:
        if self.model.training:  # acting is inference; `update` switches to train() itself
            self.model.eval()
        obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)
        check_observations("DTPolicy", obs_t, self.model.spec.obs_shape, self.num_envs)
        if reward is not None:
            reward_t = torch.as_tensor(np.asarray(reward), dtype=torch.float32, device=self.device)
            decrement = torch.where(self.fresh, 0.0, reward_t / self.config.return_scale)
            self.returns_to_go -= decrement
        with autocast(self.model, rollout=True):
            if self.inference == "window":
                prediction = self._act_window(obs_t)
            else:
                prediction = self._act_cache(obs_t)
        prediction = prediction.float()
        self.last_prediction = prediction  # (N, A) model units / logits, for inspection and tests
        self.fresh[:] = False
        self.timestep += 1
        return PolicyStep(action=self.model.to_env_action(prediction))

    def _act_window(self, obs: Tensor) -> Tensor:
        # shift every env's context left by one step and write the new step at the end
        for context in (self.obs_context, self.action_context, self.rtg_context, self.time_context):
            context.copy_(torch.roll(context, shifts=-1, dims=1))
            context[:, -1] = 0
        self.obs_context[:, -1] = obs
        self.rtg_context[:, -1] = self.returns_to_go
        self.time_context[:, -1] = self.timestep
        self.valid = (self.valid + 1).clamp(max=self.config.context_len)
        positions = torch.arange(self.config.context_len, device=self.device)
        mask = positions[None, :] >= (self.config.context_len - self.valid)[:, None]  # (N, K)
        predictions = self.model(
            self.obs_context, self.action_context, self.rtg_context, self.time_context, mask
        )  # (N, K, A)
        prediction = predictions[:, -1]
        self.action_context[:, -1] = prediction.argmax(-1) if self.spec.discrete else prediction
        return prediction

    def _act_cache(self, obs: Tensor) -> Tensor:
        model = self.model
        return_tokens, state_tokens = model._embed_steps(
            self.returns_to_go[:, None], obs[:, None], self.timestep[:, None]
        )  # (N, 1, D) each
        tokens, pad = [return_tokens, state_tokens], None
        pending = self.pending
        if bool(pending.any()):
            action_tokens = model._embed_actions(
                self.previous_action[:, None], (self.timestep - 1).clamp(min=0)[:, None]
            )  # (N, 1, D)
            tokens.insert(0, action_tokens)
            if not bool(pending.all()):  # envs that just started have no a_{t-1}: padding
                pad = (~pending).long()
        prediction, self.state = model.step_tokens(torch.cat(tokens, 1), self.state, pad)
        self.previous_action = prediction.argmax(-1) if self.spec.discrete else prediction
        self.pending[:] = True
        return prediction


def make_sampler(config: DTConfig, store: Any, seed: int) -> Any:
    """Windows of `context_len` steps, returns-to-go divided by `return_scale`."""
    from seqrl.buffers.samplers import WindowSampler

    return WindowSampler(
        store,
        context_len=config.context_len,
        batch_size=config.batch_size,
        seed=seed,
        return_scale=config.return_scale,
        max_timestep=config.max_timestep - 1,
    )


# ---- export (`seqrl export`: one pure step, the context as explicit state) ----------------------
class _DTStep(ExportStep):
    """What both inference modes keep: the return-to-go, the timestep and the reset flag."""

    def __init__(self, model: DecisionTransformerModel, target_return: float, mode: str) -> None:
        super().__init__(model.spec)
        self.model, self.config = model, model.config
        self.target_return = target_return
        self.description = (
            f"Decision Transformer ({self.config.backbone}), inference={mode!r}, fp32; "
            f"target_return={target_return:g} is in state.returns_to_go of initial_state.npz"
        )
        self.meanings = {
            "returns_to_go": "return still to collect, divided by return_scale "
            f"({self.config.return_scale:g}); the initial row sets the target return",
            "timestep": "steps taken this episode (the timestep embedding's index)",
            "fresh": "True until the first step of an episode (that step ignores `reward`)",
        }

    def _counters(self) -> dict[str, Tensor]:
        return {
            "returns_to_go": torch.tensor(self.target_return / self.config.return_scale),
            "timestep": torch.zeros((), dtype=torch.long),
            "fresh": torch.ones((), dtype=torch.bool),
        }

    def _returns_to_go(self, state: dict[str, Tensor], reward: Tensor) -> Tensor:
        """(B,) the return-to-go after the previous step's reward (ignored right after a reset)."""
        spent = torch.where(state["fresh"], 0.0, reward / self.config.return_scale)
        return state["returns_to_go"] - spent

    def _model_action(self, prediction: Tensor) -> Tensor:
        return prediction.argmax(-1) if self.spec.discrete else prediction


class DTWindowStep(_DTStep):
    """`inference="window"` as one step: the last K steps are state, left-padded, recomputed."""

    def __init__(self, model: DecisionTransformerModel, target_return: float) -> None:
        super().__init__(model, target_return, "window")
        self.meanings.update(
            obs_context="the last K observations, oldest first, left-padded with zeros",
            action_context="the last K actions (model units / indices), left-padded",
            rtg_context="the last K returns-to-go (scaled), left-padded",
            time_context="the last K timesteps, left-padded",
            valid="how many of the K context slots hold real steps",
        )

    def initial_row(self) -> dict[str, Tensor]:
        k, spec = self.config.context_len, self.spec
        action_dtype = torch.long if spec.discrete else torch.float32
        return {
            **self._counters(),
            "obs_context": torch.zeros((k, *spec.obs_shape)),
            "action_context": torch.zeros((k, *spec.action_shape), dtype=action_dtype),
            "rtg_context": torch.zeros(k),
            "time_context": torch.zeros(k, dtype=torch.long),
            "valid": torch.zeros((), dtype=torch.long),
        }

    def forward(self, obs: Tensor, reward: Tensor, *state_in: Tensor) -> tuple[Tensor, ...]:
        """obs (B, *obs_shape), reward (B,), state -> (action (B, *act_shape), *next_state)."""
        state = self.unpack(state_in)
        k = self.config.context_len
        returns_to_go = self._returns_to_go(state, reward)  # (B,)

        def shifted(context: Tensor, last: Tensor) -> Tensor:  # drop the oldest, append `last`
            return torch.cat([context[:, 1:], last[:, None].to(context.dtype)], 1)

        obs_context = shifted(state["obs_context"], obs)  # (B, K, *obs)
        no_action = torch.zeros_like(state["action_context"][:, 0])
        action_context = shifted(state["action_context"], no_action)  # (B, K, *act)
        rtg_context = shifted(state["rtg_context"], returns_to_go)  # (B, K)
        time_context = shifted(state["time_context"], state["timestep"])  # (B, K)
        valid = (state["valid"] + 1).clamp(max=k)  # (B,)
        positions = torch.arange(k, device=obs.device)
        mask = positions[None, :] >= (k - valid)[:, None]  # (B, K)
        prediction = self.model(obs_context, action_context, rtg_context, time_context, mask)
        prediction = prediction[:, -1]  # (B, A)
        chosen = self._model_action(prediction).to(action_context.dtype)[:, None]
        action_context = torch.cat([action_context[:, :-1], chosen], 1)  # a_t joins the context
        next_state = {
            "returns_to_go": returns_to_go,
            "timestep": state["timestep"] + 1,
            "fresh": torch.zeros_like(state["fresh"]),
            "obs_context": obs_context,
            "action_context": action_context,
            "rtg_context": rtg_context,
            "time_context": time_context,
            "valid": valid,
        }
        return (self.model.to_env_action(prediction), *self.pack(next_state))


class DTCacheStep(_DTStep):
    """`inference="cache"` as one step: (R_t, s_t) then a_t through the backbone's `step`."""

    def __init__(self, model: DecisionTransformerModel, target_return: float) -> None:
        super().__init__(model, target_return, "cache")

    def initial_row(self) -> dict[str, Tensor]:
        return {**self._counters(), **backbone_rows(self.model.backbone)}

    def forward(self, obs: Tensor, reward: Tensor, *state_in: Tensor) -> tuple[Tensor, ...]:
        """obs (B, *obs_shape), reward (B,), state -> (action (B, *act_shape), *next_state)."""
        state = self.unpack(state_in)
        returns_to_go, timestep = self._returns_to_go(state, reward), state["timestep"]
        prediction, memory = self.model.step_state(
            returns_to_go, obs, timestep, backbone_state(state)
        )
        memory = self.model.step_action(self._model_action(prediction), timestep, memory)
        next_state = {
            "returns_to_go": returns_to_go,
            "timestep": timestep + 1,
            "fresh": torch.zeros_like(state["fresh"]),
            **memory_rows(memory),
        }
        return (self.model.to_env_action(prediction), *self.pack(next_state))


def export_step(agent: DTAgent, options: DTPolicyOptions) -> _DTStep:
    """The step `agent.policy(1, **options)` runs, for `seqrl export`."""
    if options.inference == "window":
        return DTWindowStep(agent.model, options.target_return)
    return DTCacheStep(agent.model, options.target_return)


DecisionTransformer = DTAgent
"""The paper's name for `DTAgent`."""

ENTRY = AgentEntry(
    name="dt",
    summary="Decision Transformer (Chen et al. 2021) on a trajectory dataset",
    loop=Loop.OFFLINE,
    config_cls=DTConfig,
    agent_cls=DTAgent,
    policy_cls=DTPolicy,
    options_cls=DTPolicyOptions,
    tiny_config={"width": 16, "layers": 2, "heads": 2, "context_len": 6, "warmup_steps": 1},
    example_batch=lambda agent, seed: example_window_batch(
        agent.spec, context=agent.config.context_len, seed=seed
    ),
    make_sampler=make_sampler,
    export_step=export_step,
    budget_warnings=lambda config, steps: warmup_warnings(config.warmup_steps, steps),
)
