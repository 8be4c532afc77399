"""The one environment factory: single envs, vector envs, and the autoreset convention.

seqrl uses Gymnasium 1.x vector envs in **same-step autoreset** mode everywhere it lets the vector
env reset by itself (`make_vector_env`'s default): on a step where env i terminates or is
truncated, `obs[i]` is already the first observation of the next episode and
`infos["final_obs"][i]` holds the episode's last observation. `final_observations()` is the one
place that unpacks that. `evaluate()` instead uses `autoreset=False` and resets each env itself,
so that every episode starts from its own seed.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv


def _register_seqrl_envs() -> None:
    """Register seqrl's own env ids (memory tasks) if the module that defines them exists."""
    with contextlib.suppress(ImportError):
        from seqrl.envs import memory  # noqa: F401  (registers on import)


def check_env_id(env_id: str) -> None:
    """Raise a one-line `ValueError` naming close matches when `env_id` is not registered.

    Gymnasium's `module:Id` form (a user's own env, registered when `module` is imported) is
    accepted as `gymnasium.make` accepts it: the module is imported first."""
    _register_seqrl_envs()
    module, _, bare_id = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(
                f"environment id {env_id!r}: cannot import module {module!r} ({err}). Fix: "
                "install it or put it on PYTHONPATH (the form is module.path:EnvName-v0)"
            ) from None
        env_id = bare_id
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown environment id {env_id!r}.{hint} List the registered ids with "
        '`python -c "import gymnasium; gymnasium.pprint_registry()"`; MuJoCo tasks need '
        "`pip install gymnasium[mujoco]`."
    )


def make_env(env_id: str, seed: int | None = None, **kwargs: Any) -> gym.Env:
    """Create one Gymnasium env; if `seed` is given, seed its first reset and action space."""
    check_env_id(env_id)
    env = gym.make(env_id, **kwargs)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def make_vector_env(
    env_id: str,
    num_envs: int,
    seed: int | None = None,
    asynchronous: bool = False,
    autoreset: bool = True,
    **kwargs: Any,
) -> VectorEnv:
    """Create `num_envs` copies of `env_id` as one vector env.

    With `autoreset=True` envs reset themselves in the same step they end (see module docstring);
    with `autoreset=False` the caller resets ended envs with `reset(options={"reset_mask": m})`.
    `seed` seeds env i's first reset with `seed + i` (the caller's first `reset()` still has to
    pass seeds to get reproducible episodes: `envs.reset(seed=seed)`).
    `asynchronous=True` steps each env in its own subprocess (`AsyncVectorEnv`, same autoreset
    mode, same `infos["final_obs"]`); `False` steps them one after another in this process.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    check_env_id(env_id)
    fns = [lambda: gym.make(env_id, **kwargs) for _ in range(num_envs)]
    mode = AutoresetMode.SAME_STEP if autoreset else AutoresetMode.DISABLED
    cls = AsyncVectorEnv if asynchronous else SyncVectorEnv
    envs = cls(fns, autoreset_mode=mode)
    if seed is not None:
        envs.action_space.seed(seed)
    return envs


def final_observations(obs: np.ndarray, infos: dict[str, Any], done: np.ndarray) -> np.ndarray:
    """The observation each env actually ended its step in (for bootstrapping and datasets).

    In same-step autoreset mode, `obs[i]` for a done env is already the next episode's first
    observation; the episode's last one is in `infos["final_obs"][i]`. Returns a copy of `obs`
    with those rows replaced.
    """
    if not np.any(done):
        return obs
    if "final_obs" not in infos:
        raise RuntimeError(
            "an env finished but infos has no 'final_obs': the vector env is not in same-step "
            "autoreset mode; create it with seqrl.envs.make_vector_env"
        )
    final = np.array(obs, copy=True)
    for i in np.flatnonzero(done):
        final[i] = infos["final_obs"][i]
    return final
