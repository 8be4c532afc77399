"""Memory tasks: environments a memoryless policy cannot solve, registered as Gymnasium ids.

Importing this module registers (`seqrl.envs.check_env_id` imports it, so every seqrl command
knows these ids):

| id | task | memoryless best |
|---|---|---|
| `seqrl/TMaze-v0` | passive T-Maze, corridor length 20 (kwarg `corridor_length`) | 50% success |
| `seqrl/TMazeLong-v0` | the same with a corridor of length 50 | 50% success |
| `seqrl/RepeatPrevious-v0` | output the symbol seen `k`=3 steps ago (kwargs `k`, `num_symbols`) | 1/4 |
| `seqrl/MaskedCartPole-v1` | CartPole-v1 with the two velocities removed from the observation | far below 500 |
| `seqrl/MiniGrid-MemoryS7-v0`, ... | MiniGrid memory rooms with the image observation only | ~50% |

T-Maze (Bakker 2001, "Reinforcement Learning with Long Short-Term Memory"; the *passive* form of
Ni et al. 2023, "When Do Transformers Shine in RL?"): the agent starts at the foot of a corridor
of length L and sees a cue (up or down) only there. Walking the corridor is automatic: the first
L actions are ignored (the agent moves one cell per step). At the junction (observation flag 1)
its action turns up (0) or down (1); the episode ends with reward +1 for the turn the cue asked
for and 0 otherwise, so the mean return is the success rate. The cue and the decision are exactly
L steps apart. What differs from Bakker's maze: no wall bumps or active walking, so the task
tests memory and not exploration.

All of these are pure NumPy and cheap to step (a few microseconds), so a vector env of them costs
little next to the policy.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

MINIGRID_MEMORY_IDS = (
    "MiniGrid-MemoryS7-v0",
    "MiniGrid-MemoryS9-v0",
    "MiniGrid-MemoryS11-v0",
    "MiniGrid-MemoryS13-v0",
    "MiniGrid-MemoryS13Random-v0",
    "MiniGrid-MemoryS17Random-v0",
)


class TMazeEnv(gym.Env):
    """Passive T-Maze. Observation (3,) float32: [cue up, cue down, at junction].

    Args:
        corridor_length: L, the number of steps between seeing the cue and choosing the turn.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, corridor_length: int = 20) -> None:
        if corridor_length < 1:
            raise ValueError(f"TMaze: corridor_length must be >= 1, got {corridor_length}")
        self.corridor_length = int(corridor_length)
        self.observation_space = spaces.Box(0.0, 1.0, (3,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self._position = 0
        self._cue = 0

    def _observation(self) -> np.ndarray:
        obs = np.zeros(3, dtype=np.float32)
        if self._position == 0:
            obs[self._cue] = 1.0
        if self._position == self.corridor_length:
            obs[2] = 1.0
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._position = 0
        self._cue = int(self.np_random.integers(2))
        return self._observation(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._position < self.corridor_length:
            self._position += 1
            return self._observation(), 0.0, False, False, {}
        success = int(action) == self._cue
        return self._observation(), float(success), True, False, {"success": success}


class RepeatPreviousEnv(gym.Env):
    """Each step shows a random symbol (one-hot); the action must name the symbol shown `k`
    steps earlier. Reward 1/(length - k) per correct answer from step k on (max return 1).

    Args:
        k: how many steps back the answer lies.
        num_symbols: symbols (and actions).
        length: steps per episode (ends as terminated).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, k: int = 3, num_symbols: int = 4, length: int = 32) -> None:
        if not 1 <= k < length:
            raise ValueError(f"RepeatPrevious: need 1 <= k < length, got k={k}, length={length}")
        if num_symbols < 2:
            raise ValueError(f"RepeatPrevious: num_symbols must be >= 2, got {num_symbols}")
        self.k, self.num_symbols, self.length = int(k), int(num_symbols), int(length)
        self.observation_space = spaces.Box(0.0, 1.0, (num_symbols,), dtype=np.float32)
        self.action_space = spaces.Discrete(num_symbols)
        self._symbols = np.zeros(length, dtype=np.int64)
        self._t = 0

    def _observation(self) -> np.ndarray:
        obs = np.zeros(self.num_symbols, dtype=np.float32)
        obs[self._symbols[self._t]] = 1.0
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._symbols = self.np_random.integers(self.num_symbols, size=self.length)
        self._t = 0
        return self._observation(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        reward = 0.0
        if self._t >= self.k and int(action) == self._symbols[self._t - self.k]:
            reward = 1.0 / (self.length - self.k)
        self._t += 1
        terminated = self._t >= self.length
        if terminated:
            self._t = self.length - 1  # the observation after the end is never acted on
        return self._observation(), reward, terminated, False, {}


class MaskedCartPoleEnv(CartPoleEnv):
    """CartPole-v1 whose observation is (cart position, pole angle): the velocities must be
    inferred from consecutive observations."""

    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode)
        full = self.observation_space
        self.observation_space = spaces.Box(full.low[[0, 2]], full.high[[0, 2]], dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = super().reset(seed=seed, options=options)
        return obs[[0, 2]], info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        return obs[[0, 2]], reward, terminated, truncated, info


def make_minigrid_image_env(minigrid_id: str, **kwargs: Any) -> gym.Env:
    """A MiniGrid env with only its (7, 7, 3) uint8 image observation (`ImgObsWrapper`)."""
    try:
        import minigrid  # noqa: F401  (registers the MiniGrid ids)
        from minigrid.wrappers import ImgObsWrapper
    except ImportError:
        raise ImportError(
            f"{minigrid_id} needs the minigrid package: pip install 'seqrl[minigrid]' "
            "(or pip install minigrid)"
        ) from None
    return ImgObsWrapper(gym.make(minigrid_id, **kwargs))


def _register() -> None:
    entries: list[tuple[str, Any, dict[str, Any], int | None]] = [
        ("seqrl/TMaze-v0", TMazeEnv, {"corridor_length": 20}, None),
        ("seqrl/TMazeLong-v0", TMazeEnv, {"corridor_length": 50}, None),
        ("seqrl/RepeatPrevious-v0", RepeatPreviousEnv, {}, None),
        ("seqrl/MaskedCartPole-v1", MaskedCartPoleEnv, {}, 500),
    ]
    for env_id, entry_point, kwargs, max_steps in entries:
        if env_id not in gym.registry:
            gym.register(
                env_id, entry_point=entry_point, kwargs=kwargs, max_episode_steps=max_steps
            )
    for minigrid_id in MINIGRID_MEMORY_IDS:
        env_id = f"seqrl/{minigrid_id}"
        if env_id not in gym.registry:
            # MiniGrid envs carry their own step limit (max_steps), reported as truncation.
            gym.register(
                env_id, entry_point=make_minigrid_image_env, kwargs={"minigrid_id": minigrid_id}
            )


_register()
