"""The agent registry: algorithm name -> config dataclass and agent class.

The CLI, `seqrl.export.load_policy` and the conformance tests (tests/agents) read this registry,
so a new algorithm is usable everywhere once it is registered here.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqrl.agents.dt import DecisionTransformer, DTConfig, DTPolicy
from seqrl.agents.recurrent_ppo import RecurrentPPO, RecurrentPPOConfig


@dataclass(frozen=True)
class AgentEntry:
    """How to build one algorithm."""

    name: str
    config_cls: type
    agent_cls: type
    batch: str
    """What `update` takes: "window" (WindowBatch, offline sequences, `seqrl train ALGO
    --dataset`) or "rollout" (on-policy rollouts, `seqrl train ALGO --env`)."""
    summary: str


REGISTRY: dict[str, AgentEntry] = {
    "dt": AgentEntry(
        "dt", DTConfig, DecisionTransformer, "window", "Decision Transformer (Chen et al. 2021)"
    ),
    "recurrent-ppo": AgentEntry(
        "recurrent-ppo",
        RecurrentPPOConfig,
        RecurrentPPO,
        "rollout",
        "PPO with a memory backbone: gtrxl | lstm | gru | xlstm | mlp",
    ),
}


def get_agent_entry(name: str) -> AgentEntry:
    """The registry entry for `name`; a clear error listing the known names otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


__all__ = [
    "REGISTRY",
    "AgentEntry",
    "DTConfig",
    "DTPolicy",
    "DecisionTransformer",
    "get_agent_entry",
]
