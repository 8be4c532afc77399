"""seqrl: reinforcement learning with sequence-model policies.

Contracts live in `seqrl.core`; networks in `seqrl.nn`; algorithms in `seqrl.agents`; data in
`seqrl.buffers`; Gymnasium environments and evaluation in `seqrl.envs`; loops in `seqrl.train`.

The names below are imported on first use, so `import seqrl` stays light and
`seqrl.load_policy` never pulls in Gymnasium or the training code:

```python
import seqrl

policy = seqrl.load_policy("runs/dt-hopper")        # robots: NumPy in, NumPy out
agent, config = seqrl.load_agent("runs/dt-hopper")  # the agent, weights loaded
store = seqrl.load_dataset("seqrl-bench/hopper/medium-v0")
print(seqrl.evaluate(agent.policy(10), "Hopper-v5", episodes=20, num_envs=10).table())
```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_policy": "seqrl.export",
    "load_agent": "seqrl.export",
    "load_exported": "seqrl.runtime",
    "evaluate": "seqrl.envs.evaluate",
    "reference_scores_for": "seqrl.envs.scores",
    "load_dataset": "seqrl.buffers",
    "save_dataset": "seqrl.buffers",
    "make_backbone": "seqrl.nn",
    "Agent": "seqrl.core",
    "Policy": "seqrl.core",
    "PolicyStep": "seqrl.core",
    "EnvSpec": "seqrl.core",
    "DataStats": "seqrl.core",
    "Loop": "seqrl.core",
    "RolloutSettings": "seqrl.core",
    "WindowBatch": "seqrl.core",
    "TransitionBatch": "seqrl.core",
}

__all__ = [
    "Agent",
    "DataStats",
    "EnvSpec",
    "Loop",
    "Policy",
    "PolicyStep",
    "RolloutSettings",
    "TransitionBatch",
    "WindowBatch",
    "evaluate",
    "load_agent",
    "load_dataset",
    "load_exported",
    "load_policy",
    "make_backbone",
    "reference_scores_for",
    "save_dataset",
]

if TYPE_CHECKING:
    from seqrl.buffers import load_dataset, save_dataset
    from seqrl.core import (
        Agent,
        DataStats,
        EnvSpec,
        Loop,
        Policy,
        PolicyStep,
        RolloutSettings,
        TransitionBatch,
        WindowBatch,
    )
    from seqrl.envs.evaluate import evaluate
    from seqrl.envs.scores import reference_scores_for
    from seqrl.export import load_agent, load_policy
    from seqrl.nn import make_backbone
    from seqrl.runtime import load_exported


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'seqrl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
