"""Q-Transformer: offline TD learning with autoregressive per-dimension Q-values.

Q-Transformer (Chebotar et al., CoRL 2023, arXiv 2309.10150) discretizes every action dimension
into bins and treats the d dimensions of one action as d steps of an expanded MDP: the Q-value of
dimension i is conditioned on the history and on the bins already chosen for dimensions 1..i-1,
so a greedy action is decoded one dimension at a time and the max over 256^d joint actions is d
maxima over 256 bins. Per timestep t, with a window of W observations:

```
  slot       0       ...  W-1       W                     ...  W+d-2
  token      s_{t-W+1} .. s_t       s_t + e_1(a^1)             s_t + e_1(a^1) + .. + e_{d-1}(a^{d-1})
             (left-padded at an episode's start, masked)
  backbone   ------------- causal, any seqrl backbone by name (gpt, gtrxl, lstm, gru, xlstm, mlp) ->
  Q head                  Q^1(.)    Q^2(. | a^1)               Q^d(. | a^{1:d-1})    each (bins,)
```

Every token is LayerNorm(embedding + slot embedding); `s` is the linear embedding of the
normalized observation and `e_i` a bin embedding table per dimension. A Discrete action is one
dimension whose bins are its actions (tokens: the W observations only).

Targets (paper eq. 1), from a Polyak-averaged target network Q':
  i < d:  y^i = max_b Q'^{i+1}(s_{t-W+1:t}, a^{1:i}, b)                   (same timestep, no reward)
  i = d:  y^d = r^(n) + gamma^m (1 - done) max_b Q'^1(s_{t+m-W+1:t+m}, b)  (n-step, m <= n taken)
  every y^i >= G_t, the Monte-Carlo discounted return-to-go of the data (a lower bound of Q*).
Loss: 1/2 mean_i (Q^i(a^i) - y^i)^2 + alpha * 1/2 mean over every bin not taken in the data, in
every dimension, of Q^2: the conservative regularizer pulls unseen bins toward 0, the smallest
possible return on the value scale below.

Value scale: rewards are mapped to r' = (1 - gamma) (r - r_min) / (r_max - r_min) with the
dataset's reward range (model buffers, so a loaded agent needs no data), so every return lies in
[0, 1] and 0 is the smallest possible one. The n-step reward and the return-to-go the sampler
gives in raw units are mapped with the number of steps they sum (`discounts`, `steps_to_end`).

Acting (`QTransformerPolicy`): per env step, one parallel backbone pass over the W-observation
window (the training function, recomputed: W tokens), then d-1 incremental `backbone.step` calls
that reuse its state (KV cache, recurrent state), one action token each, batched over envs.
`decoding="recompute"` re-runs the whole prefix for every dimension (the reference, tested equal).

What differs from the paper and the public ports (see ../shared/research/qtransformer.md):
- state observations and a backbone by name over W past observations, not images + language;
- action tokens also carry s_t and the sum of the earlier bins' embeddings, so that even the
  memoryless mlp backbone computes Q^i from (s_t, a^{1:i-1}); the other backbones see it anyway;
- the value scale above with a linear Q head (lucidrains squashes with a sigmoid and regularizes
  logits); TD and regularizer are means, not sums over the batch; the bootstrap is masked at
  terminals; n-step on the last dimension only; bins act at their centres over the Box.
- the regularizer weight default 1.0 (with the 1/2 factors) is lucidrains' reading of the paper.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqrl.agents.export_step import ExportStep
from seqrl.agents.registry import AgentEntry, policy_options
from seqrl.core import (
    DataStats,
    EnvSpec,
    Loop,
    PolicyStep,
    TransitionBatch,
    check_observations,
    env_rows,
)
from seqrl.nn import make_backbone
from seqrl.nn.base import forward_selected
from seqrl.nn.discretize import from_bins, to_bins
from seqrl.nn.heads import ActionScaling
from seqrl.nn.optim import WarmupAdamW

DECODINGS = ("cache", "recompute")


@dataclass
class QTransformerConfig:
    """Q-Transformer settings."""

    backbone: str = "gpt"
    """Sequence backbone: gpt | gtrxl | lstm | gru | xlstm | mlp."""
    history: int = 4
    """W: observations per window (the current one and W-1 before it)."""
    bins: int = 256
    """Bins per Box action dimension (a Discrete action uses its own actions)."""
    width: int = 128
    """Embedding width D."""
    layers: int = 3
    """Backbone layers."""
    heads: int = 1
    """Attention heads (gpt, gtrxl) / cell heads (xlstm)."""
    dropout: float = 0.0
    """Dropout in the embedding and the backbone of the online network."""
    gamma: float = 0.98
    """Discount per environment step (both public implementations use 0.98)."""
    n_step: int = 3
    """Rewards summed before the last dimension bootstraps."""
    tau: float = 0.005
    """Polyak factor: target <- (1 - tau) target + tau online, after every update."""
    conservative_weight: float = 1.0
    """alpha: weight of the regularizer on bins not taken in the data (0 turns it off)."""
    mc_return_clamp: bool = True
    """Clamp every target below by the data's Monte-Carlo return-to-go."""
    lr: float = 3e-4
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up, in updates."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    batch_size: int = 256
    """Transitions per update."""
    device: str = "cpu"
    """Torch device for training and inference."""

    def __post_init__(self) -> None:
        for name in ("history", "bins", "width", "layers", "n_step", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"agent.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(
                f"agent.gamma must lie in [0, 1) (the value scale divides by 1 - gamma), got {self.gamma}"
            )
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"agent.tau must lie in (0, 1], got {self.tau}")
        if self.conservative_weight < 0:
            raise ValueError(
                f"agent.conservative_weight must be >= 0, got {self.conservative_weight}"
            )


@dataclass
class QTransformerPolicyOptions:
    """Options of a Q-Transformer policy (`--policy decoding=recompute`)."""

    epsilon: float = 0.1
    """With `explore=True`: per env and dimension, the chance of a uniformly random bin."""
    decoding: str = "cache"
    """"cache": d-1 incremental backbone steps after the window; "recompute": a full forward
    per dimension (the same function, d times the cost)."""

    def __post_init__(self) -> None:
        if self.decoding not in DECODINGS:
            raise ValueError(
                f"policy.decoding must be 'cache' or 'recompute', got {self.decoding!r}"
            )
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"policy.epsilon must lie in [0, 1], got {self.epsilon}")


def _reward_range(stats: DataStats) -> tuple[float, float]:
    """(r_min, span) of the dataset's rewards; a constant reward maps to the top of the scale."""
    low, high = float(stats.get("reward_min", 0.0)), float(stats.get("reward_max", 1.0))
    return (low, high - low) if high > low else (low - 1.0, 1.0)


class QTransformerModel(nn.Module):
    """Observation normalization, tokens, backbone and one Q head per action dimension."""

    def __init__(
        self, config: QTransformerConfig, spec: EnvSpec, stats: DataStats | None = None
    ) -> None:
        super().__init__()
        self.config, self.spec = config, spec
        self.obs_dim = int(np.prod(spec.obs_shape)) if spec.obs_shape else 1
        self.dims = 1 if spec.discrete else spec.action_dim
        self.bins = spec.action_dim if spec.discrete else config.bins
        stats = stats or {}
        mean = stats.get("observation_mean", np.zeros(self.obs_dim))
        std = stats.get("observation_std", np.ones(self.obs_dim))
        low, span = _reward_range(stats) if stats else (0.0, 1.0)
        self.register_buffer("obs_mean", torch.as_tensor(mean, dtype=torch.float32).reshape(-1))
        self.register_buffer("obs_std", torch.as_tensor(std, dtype=torch.float32).reshape(-1))
        self.register_buffer("reward_low", torch.tensor(low, dtype=torch.float32))
        self.register_buffer("reward_span", torch.tensor(span, dtype=torch.float32))
        width, tokens = config.width, config.history + self.dims - 1
        self.embed_obs = nn.Linear(self.obs_dim, width)
        self.embed_bins = (
            nn.Embedding((self.dims - 1) * self.bins, width) if self.dims > 1 else None
        )
        self.slot = nn.Parameter(torch.randn(tokens, width) * 0.02)  # (W + d - 1, D)
        self.embed_ln = nn.LayerNorm(width)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.backbone = make_backbone(
            config.backbone,
            width=width,
            layers=config.layers,
            heads=config.heads,
            dropout=config.dropout,
            max_len=tokens,
        )
        self.q_weight = nn.Parameter(torch.randn(self.dims, self.bins, width) * 0.02)  # (d, n, D)
        self.q_bias = nn.Parameter(torch.zeros(self.dims, self.bins))  # (d, n)
        if not spec.discrete:
            bounds = list(spec.action_low or []) + list(spec.action_high or [])
            if len(bounds) != 2 * spec.action_dim or not all(map(math.isfinite, bounds)):
                raise ValueError(
                    "Q-Transformer bins every action dimension over its Box bounds, but the "
                    f"action space has unbounded dimensions (low={spec.action_low}, "
                    f"high={spec.action_high}); bound it (gymnasium.wrappers.ClipAction) first"
                )
            self.action_scaling = ActionScaling(spec.action_dim, spec.action_low, spec.action_high)

    # ------------------------------------------------------------------------------- tokens

    def embed_window(self, obs_window: Tensor) -> Tensor:
        """(B, W, *obs_shape) raw observations -> (B, W, D) embeddings (before slot and norm)."""
        batch, length = obs_window.shape[:2]
        obs = obs_window.reshape(batch, length, self.obs_dim).float()
        return self.embed_obs((obs - self.obs_mean) / self.obs_std)

    def bin_embedding(self, bins: Tensor, dim: int) -> Tensor:
        """(B, j) bins of dimensions dim..dim+j-1 (0-based) -> (B, j, D)."""
        offsets = torch.arange(dim, dim + bins.shape[1], device=bins.device) * self.bins
        return self.embed_bins(bins + offsets)  # type: ignore[misc]

    def finish(self, raw: Tensor, first_slot: int) -> Tensor:
        """(B, T, D) raw token inputs at slots first_slot.. -> backbone tokens (B, T, D)."""
        slots = self.slot[first_slot : first_slot + raw.shape[1]]  # (T, D)
        return self.embed_dropout(self.embed_ln(raw + slots))

    def tokens(self, obs_window: Tensor, prefix: Tensor | None = None) -> Tensor:
        """Window (B, W, *obs) and chosen bins `prefix` (B, j), j < d -> tokens (B, W + j, D)."""
        embedded = self.embed_window(obs_window)  # (B, W, D)
        if prefix is None or prefix.shape[1] == 0:
            return self.finish(embedded, 0)
        actions = self.bin_embedding(prefix, 0).cumsum(1) + embedded[:, -1:]  # (B, j, D)
        return self.finish(torch.cat([embedded, actions], 1), 0)

    def head(self, hidden: Tensor, dim: int) -> Tensor:
        """(B, k, D) outputs of the tokens that score dimensions dim..dim+k-1 -> (B, k, bins)."""
        k = hidden.shape[1]
        weight, bias = self.q_weight[dim : dim + k], self.q_bias[dim : dim + k]
        return torch.einsum("bkd,knd->bkn", hidden, weight) + bias  # (B, k, n)

    # ------------------------------------------------------------------------------- Q-values

    def forward(
        self, obs_window: Tensor, window_mask: Tensor | None = None, prefix: Tensor | None = None
    ) -> Tensor:
        """`q_values`: what the loss calls, so that `--compile` (`nn.Module.compile`) covers it."""
        return self.q_values(obs_window, window_mask, prefix)

    def q_values(
        self, obs_window: Tensor, window_mask: Tensor | None = None, prefix: Tensor | None = None
    ) -> Tensor:
        """Parallel face: Q^1..Q^{j+1} (B, j + 1, bins) given the bins `prefix` (B, j) chosen
        for the first j dimensions (None: Q^1 only), from a fresh backbone state."""
        x = self.tokens(obs_window, prefix)  # (B, W + j, D)
        history = obs_window.shape[1]
        mask = None
        if window_mask is not None and not bool(window_mask.all()):
            extra = x.shape[1] - history
            mask = F.pad(window_mask.bool(), (0, extra), value=True)  # (B, W + j)
        hidden, _ = forward_selected(  # the last layer only at the scoring tokens
            self.backbone, x, slice(history - 1, None), mask=mask, return_state=False
        )
        return self.head(hidden, 0)

    @torch.no_grad()
    def decode(
        self,
        obs_window: Tensor,
        window_mask: Tensor | None = None,
        epsilon: float = 0.0,
        cached: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Greedy (epsilon-greedy) bins dimension by dimension: ((N, d) bins, (N, d, bins) Q).

        `cached`: one pass over the window, then each chosen bin's token is stepped through the
        backbone state; otherwise the whole prefix is recomputed for every dimension.
        """
        if not cached:
            prefix = obs_window.new_zeros((obs_window.shape[0], 0), dtype=torch.long)
            scores = []
            for dim in range(self.dims):
                q = self.q_values(obs_window, window_mask, prefix)[:, dim]  # (N, n)
                scores.append(q)
                prefix = torch.cat([prefix, _choose(q, epsilon)[:, None]], 1)
            return prefix, torch.stack(scores, 1)
        embedded = self.embed_window(obs_window)  # (N, W, D)
        mask = None if window_mask is None or bool(window_mask.all()) else window_mask.bool()
        hidden, state = forward_selected(self.backbone, self.finish(embedded, 0), slice(-1, None),
                                         mask=mask)  # fmt: skip
        q = self.head(hidden, 0)[:, 0]  # (N, n)
        running, history = embedded[:, -1], obs_window.shape[1]  # (N, D)
        chosen, scores = [], [q]
        for dim in range(self.dims):
            chosen.append(_choose(q, epsilon))  # (N,)
            if dim == self.dims - 1:
                break
            running = running + self.bin_embedding(chosen[-1][:, None], dim)[:, 0]
            hidden, state = self.backbone.step(self.finish(running[:, None], history + dim), state)
            q = self.head(hidden, dim + 1)[:, 0]  # (N, n)
            scores.append(q)
        return torch.stack(chosen, 1), torch.stack(scores, 1)

    # ------------------------------------------------------------------------------- actions

    def action_bins(self, actions: Tensor) -> Tensor:
        """Env actions (B, *act_shape) -> bins (B, d) int64."""
        if self.spec.discrete:
            return actions.long().reshape(-1, 1)
        return to_bins(self.action_scaling.to_model(actions.float()), self.bins)

    def bins_to_actions(self, bins: Tensor) -> Tensor:
        """Bins (N, d) -> env actions (N, *act_shape) (bin centres inside the Box)."""
        if self.spec.discrete:
            return bins[:, 0]
        return self.action_scaling.to_env(from_bins(bins, self.bins), clip=True)


def _choose(q: Tensor, epsilon: float) -> Tensor:
    """(N, n) Q-values -> (N,) argmax bins, each replaced by a uniform one with prob epsilon."""
    greedy = q.argmax(-1)
    if epsilon <= 0:
        return greedy
    random = torch.randint(0, q.shape[-1], greedy.shape, device=q.device)
    return torch.where(torch.rand(greedy.shape, device=q.device) < epsilon, random, greedy)


# ------------------------------------------------------------------------------------ targets, loss


def td_targets(
    target_q: Tensor | None,
    bootstrap_q: Tensor,
    rewards: Tensor,
    discounts: Tensor,
    dones: Tensor,
    floor: Tensor | None = None,
) -> Tensor:
    """Paper eq. 1 with the Monte-Carlo lower bound: targets (B, d).

    target_q: (B, d, n) target-network Q^1..Q^d at the data's bins (None when d = 1);
    bootstrap_q: (B, n) target-network Q^1 at the bootstrap window; rewards (B,) n-step reward
    and discounts (B,) gamma^m on the value scale; dones (B,) bool; floor (B,) or None.
    """
    last = rewards + discounts * (~dones.bool()) * bootstrap_q.max(-1).values  # (B,)
    parts = [] if target_q is None else [target_q[:, 1:].max(-1).values]  # (B, d - 1)
    targets = torch.cat([*parts, last[:, None]], 1)  # (B, d)
    return targets if floor is None else torch.maximum(targets, floor[:, None])


def conservative_penalty(q: Tensor, taken: Tensor) -> Tensor:
    """1/2 mean of Q^2 over the entries not taken in the data: q (B, d, n), taken (B, d, n) bool.
    Zero (with a gradient of zero) when every entry was taken."""
    untaken = ~taken
    count = untaken.sum().clamp(min=1)
    return 0.5 * (q.square() * untaken).sum() / count


def value_scale(
    model: QTransformerModel, batch: TransitionBatch, gamma: float
) -> tuple[Tensor, Tensor | None]:
    """The batch's n-step reward and Monte-Carlo return (None without `steps_to_end`) on the
    value scale r' = (1 - gamma)(r - r_min) / span: a sum of m rewards maps with the sum of m
    discounts, (1 - gamma^m) / (1 - gamma)."""
    low, span = model.reward_low, model.reward_span
    rewards = ((1 - gamma) * batch.rewards - low * (1 - batch.discounts)) / span  # (B,)
    if batch.steps_to_end is None:
        return rewards, None
    reach = 1 - gamma ** batch.steps_to_end.double()
    returns = ((1 - gamma) * batch.returns_to_go.double() - low * reach) / span  # (B,)
    return rewards, returns.float()


def _windows(
    batch: TransitionBatch, history: int
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """(window, mask, next window, next mask); a batch without windows works for W = 1."""
    if batch.observation_window is not None and batch.next_observation_window is not None:
        if batch.observation_window.shape[1] != history:
            raise ValueError(
                f"the batch's observation windows hold {batch.observation_window.shape[1]} steps "
                f"but agent.history={history}; build the sampler with history={history}"
            )
        return (batch.observation_window, batch.window_mask, batch.next_observation_window,
                batch.next_window_mask)  # fmt: skip
    if history != 1:
        raise ValueError(
            f"agent.history={history} needs observation windows in the batch; build the "
            "TransitionSampler with history=agent.history (make_sampler does)"
        )
    return batch.observations[:, None], None, batch.next_observations[:, None], None


def q_targets(
    model: QTransformerModel, target: QTransformerModel, batch: TransitionBatch
) -> tuple[Tensor, Tensor | None]:
    """The TD targets (B, d) of the data's bins from the target network, and the Monte-Carlo
    return on the value scale (B,) that clamped them (None with `mc_return_clamp` off)."""
    config = model.config
    window, mask, next_window, next_mask = _windows(batch, config.history)
    prefix = model.action_bins(batch.actions)[:, : model.dims - 1]  # (B, d - 1)
    rewards, returns = value_scale(model, batch, config.gamma)
    if config.mc_return_clamp and returns is None:
        raise ValueError(
            "agent.mc_return_clamp needs the batch's steps_to_end (TransitionSampler gives it); "
            "or set agent.mc_return_clamp=false"
        )
    floor = returns if config.mc_return_clamp else None
    with torch.no_grad():
        target_q = target.q_values(window, mask, prefix) if model.dims > 1 else None
        bootstrap_q = target.q_values(next_window, next_mask)[:, 0]  # (B, n)
        targets = td_targets(target_q, bootstrap_q, rewards, batch.discounts, batch.dones, floor)
    return targets, floor


def q_transformer_loss(
    model: QTransformerModel, target: QTransformerModel, batch: TransitionBatch
) -> tuple[Tensor, dict[str, float]]:
    """TD loss on every dimension plus the weighted conservative regularizer."""
    config = model.config
    window, mask, _, _ = _windows(batch, config.history)
    data_bins = model.action_bins(batch.actions)  # (B, d)
    q = model(window, mask, data_bins[:, : model.dims - 1])  # (B, d, n): q_values
    targets, floor = q_targets(model, target, batch)  # (B, d)
    taken_q = q.gather(-1, data_bins[..., None])[..., 0]  # (B, d)
    td = 0.5 * (taken_q - targets).square().mean()
    taken = F.one_hot(data_bins, model.bins).bool()  # (B, d, n)
    penalty = conservative_penalty(q, taken)
    loss = td + config.conservative_weight * penalty
    untaken = max(int((~taken).sum()), 1)
    metrics = {
        "train/loss": loss.item(),
        "train/td_loss": td.item(),
        "train/conservative_loss": penalty.item(),
        "train/q_taken": taken_q.mean().item(),
        "train/q_untaken": q.detach().masked_fill(taken, 0).sum().item() / untaken,
        "train/target_mean": targets.mean().item(),
    }
    if floor is not None:
        metrics["train/mc_clamp_fraction"] = (targets[:, -1] <= floor).float().mean().item()
    return loss, metrics


# ------------------------------------------------------------------------------------ agent


class QTransformerAgent:
    """Online and Polyak target network, AdamW with warm-up, `update(TransitionBatch)`."""

    def __init__(
        self, config: QTransformerConfig, spec: EnvSpec, stats: DataStats | None = None
    ) -> None:
        self.config, self.spec = config, spec
        self.device = torch.device(config.device)
        self.model = QTransformerModel(config, spec, stats).to(self.device)
        self.target = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optim = WarmupAdamW.from_config(self.model.parameters(), config)

    def update(self, batch: TransitionBatch) -> dict[str, float]:
        self.model.train()
        loss, metrics = q_transformer_loss(self.model, self.target, batch.to(self.device))
        metrics["train/grad_norm"], metrics["train/lr"] = self.optim.step(loss)
        with torch.no_grad():
            for online, averaged in zip(self.model.parameters(), self.target.parameters()):
                averaged.lerp_(online, self.config.tau)
        return metrics

    def policy(
        self, num_envs: int = 1, *, explore: bool = False, **options: Any
    ) -> QTransformerPolicy:
        """A batched greedy policy; `explore=True` is epsilon-greedy per dimension."""
        chosen = policy_options(QTransformerPolicyOptions, options)
        epsilon = chosen.epsilon if explore else 0.0
        return QTransformerPolicy(self.model, num_envs, epsilon, chosen.decoding)

    @property
    def updates(self) -> int:
        """Gradient updates so far."""
        return self.optim.updates

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "target": self.target.state_dict(),
            **self.optim.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Weights-only states (`{"model": ...}`) start the target network from the weights."""
        self.model.load_state_dict(state["model"])
        self.target.load_state_dict(state.get("target", state["model"]))
        self.optim.load_state_dict(state)


# ------------------------------------------------------------------------------------ policy


class QTransformerPolicy:
    """Batched greedy decoding over N envs; each env keeps its last W observations."""

    def __init__(
        self, model: QTransformerModel, num_envs: int, epsilon: float = 0.0, decoding: str = "cache"
    ) -> None:
        self.model, self.num_envs, self.epsilon = model, num_envs, epsilon
        self.cached = decoding == "cache"
        self.device = next(model.parameters()).device
        history = model.config.history
        self.window = torch.zeros((num_envs, history, *model.spec.obs_shape), device=self.device)
        self.valid = torch.zeros(num_envs, dtype=torch.long, device=self.device)  # (N,)

    def reset(self, done: np.ndarray | Tensor | None = None) -> None:
        rows = env_rows(done, self.num_envs, self.device)
        self.valid[rows] = 0
        self.window[rows] = 0

    @torch.no_grad()
    def act(
        self, obs: np.ndarray | Tensor, reward: np.ndarray | Tensor | None = None
    ) -> PolicyStep:
        """`reward` is accepted for the common signature and unused."""
        obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)
        check_observations("QTransformerPolicy", obs_t, self.model.spec.obs_shape, self.num_envs)
        history = self.window.shape[1]
        self.window = torch.cat([self.window[:, 1:], obs_t[:, None]], 1)  # (N, W, *obs)
        self.valid = (self.valid + 1).clamp(max=history)
        positions = torch.arange(history, device=self.device)
        mask = positions[None, :] >= (history - self.valid)[:, None]  # (N, W)
        if self.model.training:  # acting is inference; `update` switches to train() itself
            self.model.eval()
        bins, q = self.model.decode(self.window, mask, self.epsilon, self.cached)
        self.last_q, self.last_bins = q, bins  # (N, d, n), (N, d): for tests and inspection
        return PolicyStep(action=self.model.bins_to_actions(bins))


# ------------------------------------------------------------------------------------ entry


def make_sampler(config: QTransformerConfig, store: Any, seed: int) -> Any:
    """n-step transitions with W-observation windows and the Monte-Carlo return."""
    from seqrl.buffers.samplers import TransitionSampler

    return TransitionSampler(
        store,
        config.batch_size,
        seed,
        n_step=config.n_step,
        gamma=config.gamma,
        history=config.history,
    )


def example_transition_batch(
    spec: EnvSpec, history: int, gamma: float, batch: int = 6, seed: int = 0
) -> TransitionBatch:
    """Random n-step transitions as `TransitionSampler(history=W)` gives them: env-unit actions
    inside the Box, one window left-padded, one terminal, consistent discounts and returns."""
    gen = torch.Generator().manual_seed(seed)
    window = torch.randn((batch, history, *spec.obs_shape), generator=gen)
    next_window = torch.cat(
        [window[:, 1:], torch.randn((batch, 1, *spec.obs_shape), generator=gen)], 1
    )
    mask = torch.ones(batch, history, dtype=torch.bool)
    mask[0, : history - 1] = False  # the first step of an episode
    window = window * mask.reshape(batch, history, *[1] * len(spec.obs_shape))
    if spec.discrete:
        actions = torch.randint(0, spec.action_dim, (batch,), generator=gen)
    else:
        low, high = torch.tensor(spec.action_low), torch.tensor(spec.action_high)
        actions = low + torch.rand((batch, spec.action_dim), generator=gen) * (high - low)
    taken = torch.randint(1, 4, (batch,), generator=gen)  # steps summed (B,)
    steps_to_end = taken + torch.randint(0, 20, (batch,), generator=gen)
    dones = torch.zeros(batch, dtype=torch.bool)
    dones[1], steps_to_end[1] = True, taken[1]  # ends (terminated) within its n steps
    return TransitionBatch(
        observations=window[:, -1],
        actions=actions,
        rewards=torch.rand(batch, generator=gen) * 3 - 1,
        next_observations=next_window[:, -1],
        dones=dones,
        discounts=gamma ** taken.float(),
        returns_to_go=torch.rand(batch, generator=gen) * 20,
        steps_to_end=steps_to_end,
        observation_window=window,
        window_mask=mask,
        next_observation_window=next_window,
        next_window_mask=torch.ones(batch, history, dtype=torch.bool),
    )


# ------------------------------------------------------------------------------------ export


class QTransformerStep(ExportStep):
    """The greedy policy as one exportable step (`seqrl export`): the last W observations are
    state, left-padded; bins are decoded dimension by dimension inside the graph, always with
    `decoding="recompute"` (the same function as "cache", whose KV-cache writes ONNX cannot
    express). `reward` is taken and unused."""

    def __init__(self, model: QTransformerModel) -> None:
        super().__init__(model.spec)
        self.model = model
        self.description = "Q-Transformer, greedy, decoding='recompute'"
        self.meanings = {
            "window": "the last W observations, oldest first, left-padded with zeros",
            "valid": "how many of the W window slots hold real observations",
        }

    def initial_row(self) -> dict[str, Tensor]:
        history = self.model.config.history
        return {
            "window": torch.zeros((history, *self.spec.obs_shape)),
            "valid": torch.zeros((), dtype=torch.long),
        }

    def forward(self, obs: Tensor, reward: Tensor, *state_in: Tensor) -> tuple[Tensor, ...]:
        """obs (B, *obs_shape), reward (B,), state -> (action (B, *act_shape), *next_state)."""
        state = self.unpack(state_in)
        history = self.model.config.history
        window = torch.cat([state["window"][:, 1:], obs[:, None]], 1)  # (B, W, *obs)
        valid = (state["valid"] + 1).clamp(max=history)  # (B,)
        positions = torch.arange(history, device=obs.device)
        mask = positions[None, :] >= (history - valid)[:, None]  # (B, W)
        bins, _ = self.model.decode(window, mask, 0.0, cached=False)
        return (self.model.bins_to_actions(bins), *self.pack({"window": window, "valid": valid}))


def export_step(agent: QTransformerAgent, options: QTransformerPolicyOptions) -> QTransformerStep:
    """The step `agent.policy(1, **options)` (greedy) runs, for `seqrl export`."""
    return QTransformerStep(agent.model)


ENTRY = AgentEntry(
    name="q-transformer",
    summary="Q-Transformer (Chebotar et al. 2023): per-dimension autoregressive Q-learning on a trajectory dataset",
    loop=Loop.OFFLINE,
    config_cls=QTransformerConfig,
    agent_cls=QTransformerAgent,
    policy_cls=QTransformerPolicy,
    options_cls=QTransformerPolicyOptions,
    tiny_config={"width": 16, "layers": 1, "heads": 2, "history": 3, "bins": 8, "batch_size": 8},
    example_batch=lambda agent, seed: example_transition_batch(
        agent.spec, agent.config.history, agent.config.gamma, seed=seed
    ),
    make_sampler=make_sampler,
    export_step=export_step,
)
