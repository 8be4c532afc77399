"""The contracts every part of seqrl is written against.

- `Policy`: the inference object. `reset(done)` then `act(obs, reward)` once per environment step,
  batched over B environments. A policy owns its context (return-to-go, KV cache, recurrent state).
  `evaluate()`, data collection and the online collector call nothing else.
- `Agent`: the training object. `update(batch) -> metrics`,
  `policy(num_envs, *, explore=False, **options) -> Policy`, `state_dict()` / `load_state_dict()`.
  The loops in `seqrl.train` never branch on the algorithm: an agent's registry entry
  (`seqrl.agents.AgentEntry`) says which `Loop` trains it and what feeds it.
- `PolicyStep`: what `act` returns: the action and whatever the online buffer must store.
- `WindowBatch` / `TransitionBatch`: what the samplers in `seqrl.buffers` hand to `update`.

Shapes use B batch (or envs), K/T time, A action dims.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, TypedDict, runtime_checkable

import numpy as np
import torch
from torch import Tensor


@dataclass
class PolicyStep:
    """The result of one `Policy.act` call."""

    action: Tensor
    """(B, *act_shape): float for continuous actions, int64 for discrete ones."""
    info: dict[str, Tensor] = field(default_factory=dict)
    """Per-env extras the online buffer stores: `log_prob` (B,), `value` (B,), `memory`, ..."""


@runtime_checkable
class Policy(Protocol):
    """A batched, stateful policy over B environments."""

    def reset(self, done: np.ndarray | Tensor | None = None) -> None:
        """Start new episodes in the envs where `done` (B,) is True; `None` resets every env."""
        ...

    def act(
        self, obs: np.ndarray | Tensor, reward: np.ndarray | Tensor | None = None
    ) -> PolicyStep:
        """Choose actions for observations `obs` (B, *obs_shape).

        `reward` (B,) is the reward received for the previous action (None on the first step of
        an episode); policies that condition on returns (Decision Transformer) use it. Acting is
        inference: it puts the shared model in eval mode and leaves it there (switching back on
        every call cost a noticeable part of a fast `act`); `Agent.update` switches to train mode.
        """
        ...


@runtime_checkable
class Agent(Protocol):
    """A trainable agent: owns its networks, optimizers, schedulers and target networks.

    Its trained network is `agent.model` (an `nn.Module`). `--compile` compiles that module's
    `forward` (`seqrl.train.compiled`), so `update` computes the loss through `model(...)`; a
    loss that calls only other methods of the model would train eagerly under `--compile`
    (tests/train/test_compiled.py checks every agent's update runs compiled code).
    """

    def update(self, batch: Any) -> dict[str, float]:
        """One gradient update (the model in train mode, whatever a policy left it in); returns
        metrics with namespaced keys (`train/loss`, ...)."""
        ...

    def policy(self, num_envs: int = 1, *, explore: bool = False, **options: Any) -> Policy:
        """A fresh policy over `num_envs` envs that shares this agent's current weights.

        `explore=True` asks for the behaviour policy the online loop collects with (sampled
        actions, with what `update` needs in `PolicyStep.info`); agents without exploration
        ignore it. `options` are the algorithm's policy options (for DT `target_return`,
        `inference`); an unknown option is a `ValueError` that lists the valid ones.
        """
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class EnvSpec:
    """What a model must know of an environment's spaces; saved in every run's config."""

    obs_shape: tuple[int, ...]
    """Shape of one observation (a Discrete observation is stored as shape ())."""
    action_dim: int
    """Continuous: number of action dimensions. Discrete: number of actions."""
    discrete: bool = False
    """True for a Discrete action space (actions are int64 indices)."""
    action_low: tuple[float, ...] | None = None
    """Box lower bounds (continuous only); policies squash into [low, high]."""
    action_high: tuple[float, ...] | None = None
    """Box upper bounds (continuous only)."""

    @property
    def action_shape(self) -> tuple[int, ...]:
        return () if self.discrete else (self.action_dim,)

    def to_dict(self) -> dict[str, Any]:
        return {
            "obs_shape": list(self.obs_shape),
            "action_dim": self.action_dim,
            "discrete": self.discrete,
            "action_low": None if self.action_low is None else list(self.action_low),
            "action_high": None if self.action_high is None else list(self.action_high),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvSpec:
        low, high = data.get("action_low"), data.get("action_high")
        return cls(
            obs_shape=tuple(data["obs_shape"]),
            action_dim=int(data["action_dim"]),
            discrete=bool(data.get("discrete", False)),
            action_low=None if low is None else tuple(float(x) for x in low),
            action_high=None if high is None else tuple(float(x) for x in high),
        )

    @classmethod
    def from_spaces(cls, observation_space: Any, action_space: Any) -> EnvSpec:
        """Build from Gymnasium spaces (Box or Discrete)."""
        obs_shape = tuple(observation_space.shape or ())
        if hasattr(action_space, "n"):
            return cls(obs_shape, int(action_space.n), discrete=True)
        low = np.broadcast_to(action_space.low, action_space.shape).astype(float)
        high = np.broadcast_to(action_space.high, action_space.shape).astype(float)
        return cls(
            obs_shape,
            int(np.prod(action_space.shape)),
            False,
            tuple(low.ravel().tolist()),
            tuple(high.ravel().tolist()),
        )


class _TensorBatch:
    """Shared helpers for the batch dataclasses: move every tensor field at once."""

    def to(self, device: torch.device | str) -> Any:
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in values.items()}
        return type(self)(**moved)

    @property
    def batch_size(self) -> int:
        first = getattr(self, fields(self)[0].name)  # type: ignore[arg-type]
        return int(first.shape[0])


@dataclass
class WindowBatch(_TensorBatch):
    """Windows of K consecutive timesteps from B episodes (Decision Transformer, BC, diffusion).

    Windows shorter than K (near an episode's end) are padded; `mask` is False on padding.
    """

    observations: Tensor
    """(B, K, *obs_shape), raw (un-normalized) observations."""
    actions: Tensor
    """(B, K, *act_shape)."""
    rewards: Tensor
    """(B, K)."""
    returns_to_go: Tensor
    """(B, K), return-to-go from each step, already divided by the sampler's `return_scale`."""
    timesteps: Tensor
    """(B, K) int64, the step index within the episode."""
    mask: Tensor
    """(B, K) bool, True on real steps, False on padding."""


@dataclass
class TransitionBatch(_TensorBatch):
    """n-step transitions (Q-Transformer and other value-based agents)."""

    observations: Tensor
    """(B, *obs_shape)."""
    actions: Tensor
    """(B, *act_shape)."""
    rewards: Tensor
    """(B,), discounted sum of up to n rewards."""
    next_observations: Tensor
    """(B, *obs_shape), the observation to bootstrap from, n steps later (or the final one)."""
    dones: Tensor
    """(B,) bool, True when the episode terminated within the n steps (no bootstrap)."""
    discounts: Tensor
    """(B,), gamma ** (number of steps actually taken), the bootstrap factor."""
    returns_to_go: Tensor
    """(B,), the Monte-Carlo discounted return from this step to the episode's end."""
    steps_to_end: Tensor | None = None
    """(B,) int64, L >= 1: the recorded steps from this one to the episode's end, this one
    included (`returns_to_go` sums L rewards). None when the sampler does not give it."""
    observation_window: Tensor | None = None
    """(B, W, *obs_shape), the W observations ending at `observations` (entry W-1), left-padded
    with zeros before the episode's first step; None without a history window."""
    window_mask: Tensor | None = None
    """(B, W) bool, False on the padding of `observation_window`."""
    next_observation_window: Tensor | None = None
    """(B, W, *obs_shape), the W observations ending at `next_observations`, padded the same way
    (the episode's final observation counts as its step L)."""
    next_window_mask: Tensor | None = None
    """(B, W) bool, False on the padding of `next_observation_window`."""


class Loop(enum.Enum):
    """Which shared loop trains an agent (`seqrl.agents.AgentEntry.loop`)."""

    OFFLINE = "offline"
    """`seqrl.train.offline`: batches from a sampler over a trajectory dataset."""
    ONLINE = "online"
    """`seqrl.train.online`: rollouts collected with `policy.act` in vector envs."""


@dataclass(frozen=True)
class RolloutSettings:
    """What an online agent asks of the rollout buffer."""

    chunk_len: int | None = None
    """Truncated-backpropagation length: rollouts are cut into chunks of at most this many
    steps (and at episode ends); None = whole rollouts."""


class DataStats(TypedDict, total=False):
    """Statistics of an offline dataset (`EpisodeStore.stats()`), handed to the agent's
    constructor. Agents keep what they use as model buffers, so a loaded agent needs no data."""

    observation_mean: np.ndarray
    observation_std: np.ndarray
    observation_min: np.ndarray
    observation_max: np.ndarray
    action_min: np.ndarray | None
    action_max: np.ndarray | None
    reward_min: float
    reward_max: float
    return_min: float
    return_max: float


MEMORY_PREFIX = "memory/"
"""`PolicyStep.info` keys with this prefix hold a policy's memory (backbone state) before the
step; the rollout buffer stores them at chunk starts only, to replay chunks from them."""


def env_rows(
    done: np.ndarray | Tensor | None, num_envs: int, device: torch.device | str = "cpu"
) -> Tensor:
    """`Policy.reset`'s argument as a (N,) bool tensor: None = every env."""
    if done is None:
        return torch.ones(num_envs, dtype=torch.bool, device=device)
    rows = torch.as_tensor(np.asarray(done), dtype=torch.bool, device=device).reshape(-1)
    if rows.shape[0] != num_envs:
        raise ValueError(
            f"reset(done) got {rows.shape[0]} flags for a policy over {num_envs} envs; pass one "
            "bool per env, or None to reset all"
        )
    return rows


def check_observations(
    policy_name: str, obs: Tensor, obs_shape: tuple[int, ...], num_envs: int | None = None
) -> None:
    """The checks at the top of every `Policy.act`: one row per env (`num_envs`), each of shape
    `obs_shape`, all finite. A NaN reaching a policy would silently poison its memory (DT
    context, recurrent state) until `reset()`; this names the env row instead. Cheap: one
    reduction over the batch."""
    if num_envs is not None:
        check_num_envs(policy_name, num_envs, obs)
    if tuple(obs.shape[1:]) != tuple(obs_shape):
        raise ValueError(
            f"{policy_name}.act: observations of shape {tuple(obs.shape)}, expected "
            f"(num_envs, {', '.join(map(str, obs_shape))}) for this policy's env. Fix: pass one "
            "observation per env, as the env returns it"
        )
    if obs.is_floating_point() and not bool(torch.isfinite(obs).all()):
        row = int((~torch.isfinite(obs.reshape(len(obs), -1))).any(dim=1).nonzero()[0, 0])
        bad = obs[row].reshape(-1)
        value = bad[~torch.isfinite(bad)][0].item()
        raise ValueError(
            f"{policy_name}.act: the observation of env row {row} holds {value} (not finite). "
            "Fix: find why that env produced it; the policy's state was left untouched"
        )


def check_num_envs(policy_name: str, num_envs: int, obs: np.ndarray | Tensor) -> None:
    """A clear error when `act` gets observations for a different number of envs."""
    got = int(obs.shape[0]) if getattr(obs, "ndim", 0) > 0 else 0
    if got != num_envs:
        raise ValueError(
            f"{policy_name} was built for {num_envs} envs but got observations for {got}; "
            f"create it with agent.policy(num_envs={got})"
        )
