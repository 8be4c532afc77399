"""Simple policies: uniform random actions, and an adapter for any `callable(obs) -> action`."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from seqrl.core import PolicyStep


def _as_action_tensor(actions: np.ndarray | torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(
        np.asarray(actions) if not isinstance(actions, torch.Tensor) else actions
    )
    return tensor.float() if tensor.is_floating_point() else tensor.long()


class RandomPolicy:
    """Uniformly random actions from a single env's `action_space`, for B envs; stateless."""

    def __init__(self, action_space: gym.Space, num_envs: int, seed: int | None = None) -> None:
        self.action_space = action_space
        self.num_envs = num_envs
        self.action_space.seed(seed)

    def reset(self, done: np.ndarray | torch.Tensor | None = None) -> None:
        """Nothing to reset: random actions carry no context."""

    def act(self, obs: np.ndarray | torch.Tensor, reward: object = None) -> PolicyStep:
        batch = len(obs)
        actions = np.stack([self.action_space.sample() for _ in range(batch)])  # (B, *act_shape)
        return PolicyStep(action=_as_action_tensor(actions))


class CallablePolicy:
    """Wrap a memoryless `fn(obs (B, *obs_shape)) -> actions (B, *act_shape)` as a `Policy`.

    `fn` receives a NumPy array and may return a NumPy array or a tensor.
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray | torch.Tensor]) -> None:
        if not callable(fn):
            raise TypeError(
                f"CallablePolicy needs a callable obs -> action, got {type(fn).__name__}"
            )
        self.fn = fn

    def reset(self, done: np.ndarray | torch.Tensor | None = None) -> None:
        """Nothing to reset: the wrapped function is memoryless."""

    def act(self, obs: np.ndarray | torch.Tensor, reward: object = None) -> PolicyStep:
        obs_np = obs.cpu().numpy() if isinstance(obs, torch.Tensor) else np.asarray(obs)
        return PolicyStep(action=_as_action_tensor(self.fn(obs_np)))
