"""Load trained policies from run directories, for evaluation and for robotics code.

```python
policy = seqrl.export.load_policy("runs/hopper")   # single env, NumPy in and out
policy.reset()
action = policy.act(obs)                               # obs (*obs_shape,) -> action (*act_shape,)
```

Needs only `checkpoint.py`, the registry and the agents' model code: importing this module or
loading a policy imports none of Gymnasium, h5py, numba, Minari, TensorBoard, tyro or matplotlib
(`tests/test_export.py` runs it where those imports fail).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrl.agents import get_agent_entry
from seqrl.checkpoint import find_checkpoint, load_config, load_model_weights
from seqrl.config import from_dict
from seqrl.core import EnvSpec, Policy


def checkpoint_folder(path: Path) -> tuple[Path, Path]:
    """(run_dir, checkpoint folder) for a run dir or one of its checkpoint folders."""
    if (path / "model.safetensors").is_file():
        return path.parent.parent, path
    choice = find_checkpoint(path)
    if choice.folder is None:
        load_config(path)  # raises the "not a run directory" error when there is no config
        if choice.skipped:  # checkpoints there, none of them valid: say why
            raise ValueError(f"{path} has no valid checkpoint: {choice.skipped[0]}")
        raise FileNotFoundError(f"{path} has no checkpoint yet: train it first or wait for one")
    return path, choice.folder


def load_agent(path: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """The agent of a run (weights of its latest checkpoint, or of a checkpoint folder given
    directly) and the run's config. No optimizer state is restored."""
    run_dir, folder = checkpoint_folder(Path(path))
    config = load_config(run_dir)
    entry = get_agent_entry(config["algo"])
    agent_config = from_dict(entry.config_cls, {**config["agent"], "device": device}, "agent")
    try:
        spec = EnvSpec.from_dict(config["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{run_dir}/config.yaml: the 'spec' section is damaged ({err!r})"
        ) from None
    agent = entry.agent_cls(agent_config, spec, None)
    weights = load_model_weights(folder, device)
    try:
        agent.load_state_dict({"model": weights})
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(
            f"{folder}: the weights do not fit the run's config.yaml ({first}). Fix: use the "
            "config.yaml this checkpoint was trained with"
        ) from None
    return agent, config


class NumpyPolicy:
    """One env, NumPy in and out: `reset()`, then `act(obs) -> action` once per step."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def reset(self) -> None:
        self.policy.reset(None)

    def act(self, obs: np.ndarray, reward: float | None = None) -> np.ndarray:
        """`obs` (*obs_shape,); `reward` of the previous step (return-conditioned policies)."""
        batch_reward = None if reward is None else np.array([reward], dtype=np.float32)
        step = self.policy.act(np.asarray(obs)[None], batch_reward)
        return step.action[0].cpu().numpy()


def load_policy(
    path: str | Path, num_envs: int | None = None, device: str = "cpu", **options: Any
) -> Any:
    """A policy of a trained run. With `num_envs=None`: a single-env `NumpyPolicy`; otherwise
    the batched `Policy` for `num_envs` envs. `options` override the run's policy options
    (`config.yaml`'s `policy:` section)."""
    agent, config = load_agent(path, device)
    options = {**(config.get("policy") or {}), **options}
    with torch.no_grad():
        policy = agent.policy(num_envs or 1, **options)
    return NumpyPolicy(policy) if num_envs is None else policy
