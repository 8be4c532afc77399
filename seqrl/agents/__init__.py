"""The agents, one file each, and their registry: algorithm name -> `AgentEntry`.

Every agent module ends with `ENTRY = AgentEntry(...)` (`seqrl.agents.registry`): the loops, the
CLI, `seqrl.export` and the conformance tests (tests/agents) read only that, so a new algorithm
is usable everywhere once its entry is listed here. Every agent exports its classes under one
naming scheme: `<Name>Config`, `<Name>Agent`, `<Name>Policy`, `<Name>PolicyOptions`.
"""

from __future__ import annotations

from seqrl.agents import bc, diffusion, dt, q_transformer, recurrent_ppo
from seqrl.agents.bc import BCAgent, BCConfig, BCPolicy, BCPolicyOptions
from seqrl.agents.diffusion import (
    DiffusionAgent,
    DiffusionConfig,
    DiffusionPolicy,
    DiffusionPolicyOptions,
)
from seqrl.agents.dt import DecisionTransformer, DTAgent, DTConfig, DTPolicy, DTPolicyOptions
from seqrl.agents.q_transformer import (
    QTransformerAgent,
    QTransformerConfig,
    QTransformerPolicy,
    QTransformerPolicyOptions,
)
from seqrl.agents.recurrent_ppo import (
    RecurrentPPO,
    RecurrentPPOAgent,
    RecurrentPPOConfig,
    RecurrentPPOPolicy,
    RecurrentPPOPolicyOptions,
)
from seqrl.agents.registry import AgentEntry

REGISTRY: dict[str, AgentEntry] = {
    entry.name: entry
    for entry in (
        dt.ENTRY,
        recurrent_ppo.ENTRY,
        bc.ENTRY,
        diffusion.ENTRY,
        q_transformer.ENTRY,
    )
}


def get_agent_entry(name: str) -> AgentEntry:
    """The registry entry for `name`; a clear error listing the known names otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


__all__ = [
    "REGISTRY",
    "AgentEntry",
    "BCAgent",
    "BCConfig",
    "BCPolicy",
    "BCPolicyOptions",
    "DTAgent",
    "DTConfig",
    "DTPolicy",
    "DTPolicyOptions",
    "DecisionTransformer",
    "DiffusionAgent",
    "DiffusionConfig",
    "DiffusionPolicy",
    "DiffusionPolicyOptions",
    "QTransformerAgent",
    "QTransformerConfig",
    "QTransformerPolicy",
    "QTransformerPolicyOptions",
    "RecurrentPPO",
    "RecurrentPPOAgent",
    "RecurrentPPOConfig",
    "RecurrentPPOPolicy",
    "RecurrentPPOPolicyOptions",
    "get_agent_entry",
]
