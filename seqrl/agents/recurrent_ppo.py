"""Recurrent PPO: clipped PPO with a memory backbone (GTrXL, LSTM, GRU, xLSTM) or none (mlp).

Schulman et al. 2017, "Proximal Policy Optimization Algorithms", with the recurrent training of
the GTrXL paper (Parisotto et al. 2020, "Stabilizing Transformers for Reinforcement Learning")
and of SB3-contrib's RecurrentPPO: truncated backpropagation through time over chunks of at most
`chunk_len` steps, each replayed through the backbone's parallel forward from the memory the
policy held when the chunk's first step was collected (`seqrl.buffers.rollout`).

Model: observation normalization (running mean/std, clipped) -> Linear + tanh encoder to width D
-> backbone -> a categorical (discrete) or diagonal Gaussian (continuous, state-independent log
std) policy head and a value head, sharing the backbone. Loss: clipped surrogate + `vf_coef` x
value loss (optionally clipped around the old values) - `ent_coef` x entropy, advantages (GAE)
normalized per minibatch, global gradient clipping.

What differs from the references:
- Truncated episodes bootstrap from V(final observation), computed at the start of `update` by
  replaying the chunk that ends there with the final observation appended; terminated ones do
  not bootstrap. The GTrXL paper and SB3-contrib treat a time limit as termination (SB3-contrib
  bootstraps only through an extra value call outside its policy API).
- Chunks end at episode ends and are right-padded, so every backbone runs its fused parallel
  path (no per-step loop for LSTMs); SB3-contrib's LSTM loops over steps whenever a sequence
  holds an episode start.
- One backbone serves actor and critic (SB3-contrib defaults to separate LSTMs).
- The value head learns in units of the running std of its targets (kept in the model, like the
  observation statistics; MAPPO's "ValueNorm", PopArt without the output correction). With a
  backbone shared by actor and critic, raw value errors of a reward scale like CartPole's
  (returns in the hundreds) drown the policy gradient in Adam's normalization, and the policy
  learns several times slower; SB3-contrib sidesteps this by detaching or separating the critic.
- Observation statistics are updated after the gradient epochs, so the log-probs recorded
  during collection and the ones replayed in `update` see the same normalization.
- Continuous actions: the Gaussian lives in [-1, 1] units, scaled into the action box and
  clipped there; the unclipped sample is what the log-prob refers to.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Normal

from seqrl.agents.examples import example_rollout
from seqrl.agents.export_step import (
    ExportStep,
    backbone_rows,
    backbone_state,
    memory_rows,
)
from seqrl.agents.registry import AgentEntry, policy_options
from seqrl.core import (
    MEMORY_PREFIX,
    DataStats,
    EnvSpec,
    Loop,
    PolicyStep,
    RolloutSettings,
    check_observations,
    env_rows,
)
from seqrl.nn import make_backbone
from seqrl.nn.base import State
from seqrl.nn.heads import ActionScaling
from seqrl.nn.optim import optimizer_step

if TYPE_CHECKING:
    from seqrl.buffers.rollout import Rollout

BACKBONES = ("gtrxl", "lstm", "gru", "xlstm", "mlp")


@dataclass
class RecurrentPPOConfig:
    """Recurrent PPO settings (defaults: CleanRL's PPO, a small GTrXL)."""

    backbone: str = "gtrxl"
    """Memory: gtrxl | lstm | gru | xlstm, or mlp (no memory; the baseline for memory tasks)."""
    width: int = 64
    """D: width of the encoder, backbone and heads' input."""
    layers: int = 1
    """Backbone layers (mlp: hidden layers after the encoder)."""
    heads: int = 1
    """Attention heads (gtrxl) / cell heads (xlstm)."""
    memory: int = 64
    """GTrXL memory M: each step attends to itself and the M previous steps of its episode."""
    dropout: float = 0.0
    """Dropout in the backbone."""
    chunk_len: int = 32
    """T: truncated-backpropagation length; chunks also end at episode ends."""
    lr: float = 3e-4
    """Adam learning rate."""
    lr_anneal_steps: int | None = None
    """Decay the learning rate linearly to 0 over this many environment steps of training data
    (set it to train.steps, as CleanRL does); None keeps it constant."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip: float = 0.2
    """PPO ratio clip epsilon."""
    value_clip: float | None = None
    """Clip the value prediction to old value +- this (None: no value clipping)."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    epochs: int = 4
    """Passes over each rollout."""
    minibatches: int = 4
    """Minibatches per epoch (split by chunks)."""
    normalize_advantages: bool = True
    """Normalize advantages per minibatch (over real steps)."""
    normalize_observations: bool = True
    """Running mean/std observation normalization (kept in the model, saved with it)."""
    observation_clip: float = 10.0
    """Clip normalized observations to +- this."""
    normalize_values: bool = True
    """Learn the value in units of the running std of its targets (mean/std kept in the model):
    the value loss stays O(1) whatever the reward scale, so on the shared backbone it does not
    drown the policy gradient (`value_clip` is then in those units too)."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the Gaussian head (continuous actions)."""
    device: str = "cpu"
    """Torch device for training and inference."""

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"agent.backbone must be one of {', '.join(BACKBONES)}; got {self.backbone!r}"
            )
        if self.lr_anneal_steps is not None and self.lr_anneal_steps < 1:
            raise ValueError(
                f"agent.lr_anneal_steps must be >= 1 or None, got {self.lr_anneal_steps}"
            )
        for name in ("width", "layers", "chunk_len", "epochs", "minibatches", "memory"):
            if getattr(self, name) < 1:
                raise ValueError(f"agent.{name} must be >= 1, got {getattr(self, name)}")


def _orthogonal(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class RecurrentPPOModel(nn.Module):
    """Normalizer + encoder + backbone + policy and value heads."""

    def __init__(self, config: RecurrentPPOConfig, spec: EnvSpec) -> None:
        super().__init__()
        self.config, self.spec = config, spec
        self.obs_dim = int(np.prod(spec.obs_shape)) if spec.obs_shape else 1
        width = config.width
        self.register_buffer("obs_mean", torch.zeros(self.obs_dim))
        self.register_buffer("obs_var", torch.ones(self.obs_dim))
        self.register_buffer("obs_count", torch.zeros(()))
        self.register_buffer("return_mean", torch.zeros(()))
        self.register_buffer("return_var", torch.ones(()))
        self.register_buffer("return_count", torch.zeros(()))
        self.encoder = nn.Sequential(_orthogonal(nn.Linear(self.obs_dim, width), 2**0.5), nn.Tanh())
        self.backbone = make_backbone(
            config.backbone,
            width=width,
            layers=config.layers,
            heads=config.heads,
            dropout=config.dropout,
            window=config.memory,
            # mlp: tanh layers (CleanRL's PPO); the other backbones keep their own activation
            activation="tanh" if config.backbone == "mlp" else None,
        )
        self.policy_head = _orthogonal(nn.Linear(width, spec.action_dim), 0.01)
        self.value_head = _orthogonal(nn.Linear(width, 1), 1.0)
        if not spec.discrete:
            self.log_std = nn.Parameter(torch.full((spec.action_dim,), config.init_log_std))
            self.action_scaling = ActionScaling(spec.action_dim, spec.action_low, spec.action_high)

    def normalize(self, obs: Tensor) -> Tensor:
        """(..., *obs_shape) raw -> (..., obs_dim) normalized and clipped."""
        lead = obs.shape[: obs.dim() - len(self.spec.obs_shape)]
        flat = obs.reshape(*lead, self.obs_dim).float()
        if not self.config.normalize_observations:
            return flat
        clip = self.config.observation_clip
        return ((flat - self.obs_mean) / torch.sqrt(self.obs_var + 1e-8)).clamp(-clip, clip)

    @torch.no_grad()
    def update_observation_stats(self, obs: Tensor) -> None:
        """Merge a batch of raw observations (..., *obs_shape) into the running mean/var."""
        _merge_stats(
            obs.reshape(-1, self.obs_dim).float(), self.obs_mean, self.obs_var, self.obs_count
        )

    @torch.no_grad()
    def update_return_stats(self, returns: Tensor) -> None:
        """Merge value targets (K,) into the running mean/var the value head is scaled by."""
        _merge_stats(
            returns.reshape(-1, 1).float(), self.return_mean, self.return_var, self.return_count
        )

    def value_scale(self) -> Tensor:
        """The std the value head's output is multiplied by (1 without value normalization)."""
        if not self.config.normalize_values:
            return torch.ones((), device=self.return_var.device)
        return torch.sqrt(self.return_var + 1e-8)

    def _value(self, hidden: Tensor) -> Tensor:
        """Value in env units from the head (normalized units) and the running statistics."""
        value = self.value_head(hidden).squeeze(-1)
        if not self.config.normalize_values:
            return value
        return value * self.value_scale() + self.return_mean

    def forward(self, obs: Tensor, state: State | None) -> tuple[Tensor, Tensor]:
        """Parallel replay: obs (B, T, *obs_shape) from `state` -> (head output (B, T, A),
        value (B, T)). Padding must be on the right (outputs at real steps ignore it)."""
        hidden, _ = self.backbone(self.encoder(self.normalize(obs)), state or None)  # (B, T, D)
        return self.policy_head(hidden), self._value(hidden)

    def step(self, obs: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        """One step for B envs: obs (B, *obs_shape) -> (head output (B, A), value (B,), state)."""
        tokens = self.encoder(self.normalize(obs))[:, None]  # (B, 1, D)
        hidden, state = self.backbone.step(tokens, state)  # (B, 1, D)
        hidden = hidden[:, 0]
        return self.policy_head(hidden), self._value(hidden), state

    def distribution(self, head: Tensor) -> Categorical | Normal:
        if self.spec.discrete:
            return Categorical(logits=head, validate_args=False)
        return Normal(head, self.log_std.exp().expand_as(head), validate_args=False)

    def log_prob(self, dist: Categorical | Normal, action: Tensor) -> Tensor:
        out = dist.log_prob(action)
        return out if self.spec.discrete else out.sum(-1)

    def entropy(self, dist: Categorical | Normal) -> Tensor:
        out = dist.entropy()
        return out if self.spec.discrete else out.sum(-1)

    def to_env_action(self, sample: Tensor) -> Tensor:
        """Gaussian sample in [-1, 1] units -> the action box (clipped); discrete: unchanged."""
        if self.spec.discrete:
            return sample
        return self.action_scaling.to_env(sample, clip=True)


def _merge_stats(batch: Tensor, mean: Tensor, var: Tensor, count: Tensor) -> None:
    """Chan et al.'s parallel update of running (mean, var, count) with `batch` (K, F), in place."""
    size = batch.shape[0]
    batch_mean, batch_var = batch.mean(0), batch.var(0, unbiased=False)
    total = count + size
    delta = batch_mean - mean
    m2 = var * count + batch_var * size + delta**2 * count * size / total
    mean += (delta * size / total).reshape(mean.shape)
    var.copy_((m2 / total).reshape(var.shape))
    count.copy_(total)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


@dataclass
class RecurrentPPOPolicyOptions:
    """Recurrent PPO policies have no options beyond `explore` (sample instead of the mode)."""


class RecurrentPPOAgent:
    """The agent: `update(Rollout)` runs `epochs` x `minibatches` PPO steps over chunks.

    Online: `stats` is accepted for the common signature and unused (the observation
    normalization is a running estimate kept in the model)."""

    def __init__(
        self, config: RecurrentPPOConfig, spec: EnvSpec, stats: DataStats | None = None
    ) -> None:
        self.config, self.spec = config, spec
        self.device = torch.device(config.device)
        self.model = RecurrentPPOModel(config, spec).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, eps=1e-5)
        self.updates = 0
        self.env_steps = 0  # environment steps trained on, for the learning-rate schedule

    # ---- update ---------------------------------------------------------------------------
    @torch.no_grad()
    def bootstrap_values(self, rollout: Rollout) -> Tensor:
        """(R, N) V(bootstrap observation) after the chunks that have one, zeros elsewhere.

        Each such chunk is replayed from its stored memory with its bootstrap observation
        appended right after its last real step: the value there is what the policy would have
        computed for the final (or next) observation.
        """
        out = torch.zeros(rollout.num_steps * rollout.num_envs, device=self.device)
        chunks = torch.nonzero(rollout.bootstrap_mask).squeeze(-1)
        if len(chunks) == 0:
            return out.view(rollout.num_steps, rollout.num_envs)
        obs = rollout.chunked(rollout.observations, chunks).float()  # (Cb, T, *obs)
        obs = torch.cat([obs, torch.zeros_like(obs[:, :1])], 1)  # (Cb, T + 1, *obs)
        length = rollout.chunk_length[chunks]
        rows = torch.arange(len(chunks), device=obs.device)
        obs[rows, length] = rollout.bootstrap_observations[chunks].to(obs.dtype)
        _, values = self.model(obs, rollout.chunk_memory(chunks))  # (Cb, T + 1)
        out[rollout.last_step_of_chunks()[chunks]] = values[rows, length]
        return out.view(rollout.num_steps, rollout.num_envs)

    def advantages(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        """GAE advantages and value targets, both (R, N)."""
        from seqrl.buffers.rollout import compute_gae  # numba: training only, not for load_policy

        boot = self.bootstrap_values(rollout).cpu().numpy()
        advantages, returns = compute_gae(
            rollout.rewards.cpu().numpy().astype(np.float32),
            rollout.info["value"].cpu().numpy().astype(np.float32),
            rollout.terminated.cpu().numpy(),
            rollout.truncated.cpu().numpy(),
            boot.astype(np.float32),
            self.config.gamma,
            self.config.gae_lambda,
        )
        as_tensor = lambda array: torch.from_numpy(array).to(self.device)  # noqa: E731
        return as_tensor(advantages), as_tensor(returns)

    def update(self, rollout: Rollout) -> dict[str, float]:
        config = self.config
        if config.lr_anneal_steps is not None:
            remaining = max(0.0, 1.0 - self.env_steps / config.lr_anneal_steps)
            self.optimizer.param_groups[0]["lr"] = config.lr * remaining
        rollout = rollout.to(self.device)
        self.model.eval()
        advantages, returns = self.advantages(rollout)
        if config.normalize_values:
            # before the epochs: the value head learns the new targets in the new units
            self.model.update_return_stats(returns)
        self.model.train()
        actions = rollout.info.get("raw_action", rollout.actions)
        data = {
            "obs": rollout.chunked(rollout.observations),  # (C, T, *obs)
            "action": rollout.chunked(actions),  # (C, T, *act)
            "log_prob": rollout.chunked(rollout.info["log_prob"]),  # (C, T)
            "value": rollout.chunked(rollout.info["value"]),  # (C, T)
            "advantage": rollout.chunked(advantages),  # (C, T)
            "return": rollout.chunked(returns),  # (C, T)
            "mask": rollout.chunk_mask.float(),  # (C, T)
        }
        stats: dict[str, list[float]] = {}
        for _ in range(config.epochs):
            order = torch.randperm(rollout.num_chunks).to(self.device)
            # exactly min(minibatches, chunks) pieces, sizes within one (chunk() may give fewer)
            for chunks in order.tensor_split(min(config.minibatches, rollout.num_chunks)):
                # right padding past the minibatch's longest chunk is dropped (exact: causal)
                length = int(rollout.chunk_length[chunks].max())
                batch = {key: value[chunks, :length] for key, value in data.items()}
                loss, metrics = self.loss(batch, rollout.chunk_memory(chunks))
                metrics["train/grad_norm"] = optimizer_step(
                    self.optimizer, loss, self.model.parameters(), config.max_grad_norm
                )
                for key, value in metrics.items():
                    stats.setdefault(key, []).append(float(value))
        self.model.eval()
        if config.normalize_observations:
            self.model.update_observation_stats(rollout.observations)
        self.updates += 1
        self.env_steps += rollout.num_steps * rollout.num_envs
        out = {key: float(np.mean(values)) for key, values in stats.items()}
        real = rollout.chunk_mask
        out["train/explained_variance"] = _explained_variance(
            data["value"][real], data["return"][real]
        )
        out["train/lr"] = self.optimizer.param_groups[0]["lr"]
        return out

    def loss(self, batch: dict[str, Tensor], memory: State) -> tuple[Tensor, dict[str, Any]]:
        """The PPO loss on a minibatch of chunks (C', T) replayed from their stored memory."""
        config, mask = self.config, batch["mask"]
        head, value = self.model(batch["obs"], memory)  # (C', T, A), (C', T)
        dist = self.model.distribution(head)
        log_prob = self.model.log_prob(dist, batch["action"])  # (C', T)
        entropy = masked_mean(self.model.entropy(dist), mask)
        log_ratio = log_prob - batch["log_prob"]
        ratio = log_ratio.exp()
        advantage = batch["advantage"]
        if config.normalize_advantages:
            mean = masked_mean(advantage, mask)
            std = masked_mean((advantage - mean) ** 2, mask).sqrt()
            advantage = (advantage - mean) / (std + 1e-8)
        surrogate = torch.max(
            -advantage * ratio, -advantage * ratio.clamp(1 - config.clip, 1 + config.clip)
        )
        policy_loss = masked_mean(surrogate, mask)
        scale = self.model.value_scale()  # errors in units of the targets' running std
        value_error = ((value - batch["return"]) / scale) ** 2
        if config.value_clip is not None:
            limit = config.value_clip * scale
            clipped = batch["value"] + (value - batch["value"]).clamp(-limit, limit)
            value_error = torch.max(value_error, ((clipped - batch["return"]) / scale) ** 2)
        value_loss = 0.5 * masked_mean(value_error, mask)
        loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
        with torch.no_grad():
            approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
            clip_fraction = masked_mean(((ratio - 1).abs() > config.clip).float(), mask)
        return loss, {
            "train/loss": loss.item(),
            "train/policy_loss": policy_loss.item(),
            "train/value_loss": value_loss.item(),
            "train/entropy": entropy.item(),
            "train/approx_kl": approx_kl.item(),
            "train/clip_fraction": clip_fraction.item(),
        }

    # ---- policy and state ------------------------------------------------------------------
    def policy(
        self, num_envs: int = 1, *, explore: bool = False, **options: Any
    ) -> RecurrentPPOPolicy:
        """A policy over `num_envs` envs sharing this agent's weights; `explore=True` samples
        actions and records what `update` needs (the online loop's collector), otherwise it
        takes the mode (argmax / Gaussian mean)."""
        policy_options(RecurrentPPOPolicyOptions, options)  # rejects unknown options
        return RecurrentPPOPolicy(self.model, num_envs, deterministic=not explore)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
            "env_steps": self.env_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if "optimizer" in state:
            # a copy: torch's Optimizer.load_state_dict keeps the given tensors, so loading a
            # live agent's state would make the two agents share (and both mutate) Adam moments
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
            self.updates = int(state["updates"])
            self.env_steps = int(state.get("env_steps", 0))


def _explained_variance(predicted: Tensor, target: Tensor) -> float:
    variance = target.var(unbiased=False)
    if variance <= 0:
        return float("nan")
    return float(1 - (target - predicted).var(unbiased=False) / variance)


class RecurrentPPOPolicy:
    """Batched rollouts over N envs; owns the backbone memory (reset per env on `reset(done)`).

    `act` returns the env action and, in `info`: `log_prob` (N,), `value` (N,), `raw_action`
    (continuous: the unclipped Gaussian sample) and the memory it acted from under
    `"memory/<name>"` (the rollout buffer keeps it at chunk starts).
    """

    def __init__(self, model: RecurrentPPOModel, num_envs: int, deterministic: bool = True) -> None:
        self.model, self.num_envs, self.deterministic = model, num_envs, deterministic
        self.device = next(model.parameters()).device
        self.state: State = model.backbone.initial_state(num_envs, self.device)

    def reset(self, done: np.ndarray | Tensor | None = None) -> None:
        if done is None:
            self.state = self.model.backbone.initial_state(self.num_envs, self.device)
            return
        rows = env_rows(done, self.num_envs, self.device)
        if rows.any():
            self.state = self.model.backbone.reset_state(self.state, rows)

    @torch.no_grad()
    def act(
        self, obs: np.ndarray | Tensor, reward: np.ndarray | Tensor | None = None
    ) -> PolicyStep:
        obs_t = torch.as_tensor(np.asarray(obs), device=self.device)
        check_observations("RecurrentPPOPolicy", obs_t, self.model.spec.obs_shape, self.num_envs)
        if self.model.training:  # acting is inference; `update` switches to train() itself
            self.model.eval()
        memory = {MEMORY_PREFIX + key: value for key, value in self.state.items()}
        head, value, self.state = self.model.step(obs_t, self.state)
        if self.model.spec.discrete:  # the Categorical's math without its per-call overhead
            log_probs = torch.log_softmax(head, -1)  # (N, A)
            if self.deterministic:
                sample = head.argmax(-1)
            else:
                sample = torch.multinomial(log_probs.exp(), 1).squeeze(-1)  # (N,)
            log_prob = log_probs.gather(-1, sample[:, None]).squeeze(-1)
        else:
            dist = self.model.distribution(head)
            sample = head if self.deterministic else dist.sample()  # (N, A)
            log_prob = self.model.log_prob(dist, sample)
        info = {"log_prob": log_prob, "value": value, **memory}
        if not self.model.spec.discrete:
            info["raw_action"] = sample
        return PolicyStep(action=self.model.to_env_action(sample), info=info)


# ---- export (`seqrl export`: one pure step, the memory as explicit state) ------------------------
class RecurrentPPOStep(ExportStep):
    """The deterministic policy (argmax / Gaussian mean, scaled and clipped into the Box) as one
    exportable step; its state is the backbone's memory. `reward` is taken and unused."""

    def __init__(self, model: RecurrentPPOModel) -> None:
        super().__init__(model.spec)
        self.model = model
        self.description = f"recurrent PPO ({model.config.backbone}), deterministic actions"

    def initial_row(self) -> dict[str, Tensor]:
        return backbone_rows(self.model.backbone)

    def forward(self, obs: Tensor, reward: Tensor, *state_in: Tensor) -> tuple[Tensor, ...]:
        """obs (B, *obs_shape), reward (B,), memory -> (action (B, *act_shape), *next memory)."""
        head, _, memory = self.model.step(obs, backbone_state(self.unpack(state_in)))
        sample = head.argmax(-1) if self.spec.discrete else head  # (B,) or (B, A)
        return (self.model.to_env_action(sample), *self.pack(memory_rows(memory)))


def export_step(agent: RecurrentPPOAgent, options: RecurrentPPOPolicyOptions) -> RecurrentPPOStep:
    """The step `agent.policy(1)` (explore=False) runs, for `seqrl export`."""
    return RecurrentPPOStep(agent.model)


RecurrentPPO = RecurrentPPOAgent
"""Short name for `RecurrentPPOAgent`."""


def anneal_warnings(config: RecurrentPPOConfig, steps: int) -> list[str]:
    """A learning-rate decay over another length than the run's env steps."""
    if config.lr_anneal_steps is None or config.lr_anneal_steps == steps:
        return []
    where = "before the end" if config.lr_anneal_steps < steps else "only partly"
    return [
        f"agent.lr_anneal_steps={config.lr_anneal_steps} differs from the run's {steps} env "
        f"steps: the learning rate decays {where}; set --set agent.lr_anneal_steps={steps}"
    ]


ENTRY = AgentEntry(
    name="recurrent-ppo",
    summary="PPO with a memory backbone (gtrxl | lstm | gru | xlstm | mlp) on a Gymnasium env",
    loop=Loop.ONLINE,
    config_cls=RecurrentPPOConfig,
    agent_cls=RecurrentPPOAgent,
    policy_cls=RecurrentPPOPolicy,
    options_cls=RecurrentPPOPolicyOptions,
    tiny_config={"backbone": "lstm", "width": 16, "layers": 1, "memory": 6, "chunk_len": 4},
    example_batch=lambda agent, seed: example_rollout(
        agent, seed=seed, chunk_len=agent.config.chunk_len
    ),
    rollout_settings=lambda config: RolloutSettings(chunk_len=config.chunk_len),
    budget_warnings=lambda config, steps: anneal_warnings(config, steps),
    export_step=export_step,
)
