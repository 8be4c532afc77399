"""What a registered agent tells the loops, the CLI, export and the conformance tests.

An algorithm is one file in `seqrl/agents/` that ends with an `ENTRY = AgentEntry(...)`, plus one
line in `seqrl/agents/__init__.py`. Nothing outside `seqrl/agents/` names an algorithm or reads
an agent's config fields: `seqrl.train`, `seqrl.cli` and `seqrl.export` go through this entry.

```
  seqrl train ALGO ...           entry.loop -> offline or online loop
    build                        entry.agent_cls(config, spec, stats)     (one signature)
    feed (offline)               entry.make_sampler(config, store, seed) -> sampler.sample()
    feed (online)                entry.rollout_settings(config) -> RolloutSettings
  seqrl eval RUN --policy k=v    agent.policy(num_envs, explore=False, **options)
  tests/agents/test_conformance  entry.tiny_config, entry.example_batch(agent, seed)
  seqrl export RUN --format F    entry.export_step(agent, options) -> ExportStep
```
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from seqrl.config import from_dict
from seqrl.core import Loop, RolloutSettings


@dataclass(frozen=True)
class AgentEntry:
    """The registry entry of one algorithm."""

    name: str
    """What `seqrl train NAME` and `config.yaml`'s `algo` call it."""
    summary: str
    """One line for `seqrl train --help`."""
    loop: Loop
    """Which shared loop trains it."""
    config_cls: type
    """The config dataclass (`agent:` section of a run config)."""
    agent_cls: type
    """Built as `agent_cls(config, spec, stats=None)`: `spec` a `seqrl.core.EnvSpec`, `stats` the
    dataset's `DataStats` (offline) or None (online agents, and agents whose weights are about to
    be loaded: statistics an agent uses live in its model's buffers)."""
    policy_cls: type
    """What `agent.policy(...)` returns."""
    options_cls: type
    """The policy options dataclass (`policy:` section of a run config, `--policy k=v`)."""
    tiny_config: dict[str, Any]
    """A small, fast config for the conformance tests."""
    example_batch: Callable[[Any, int], Any]
    """`example_batch(agent, seed)`: a small batch of the kind `agent.update` takes."""
    make_sampler: Callable[[Any, Any, int], Any] | None = None
    """Offline agents: `make_sampler(config, store, seed)` -> what feeds `update` (anything with
    `sample()`, `state_dict()`, `load_state_dict()`)."""
    rollout_settings: Callable[[Any], RolloutSettings] = field(
        default=lambda config: RolloutSettings()
    )
    """Online agents: what the rollout buffer must do for this config."""
    export_step: Callable[[Any, Any], Any] | None = None
    """`export_step(agent, options)` -> a `seqrl.agents.export_step.ExportStep`: the policy
    `agent.policy(1, **options)` would run, as one pure step with its state as explicit inputs
    and outputs (`seqrl export`, `seqrl.export_graph`). `options`: the options dataclass."""

    budget_warnings: Callable[[Any, int], list[str]] = field(default=lambda config, steps: [])
    """`budget_warnings(config, steps)`: the agent's schedules that do not fit a run of `steps`
    (a warm-up longer than the run, annealing over another length), each a line that names the
    setting and the fix; printed when a run starts."""

    def __post_init__(self) -> None:
        if self.loop is Loop.OFFLINE and self.make_sampler is None:
            raise ValueError(f"agent {self.name!r}: an offline agent needs make_sampler")


def warmup_warnings(warmup_steps: int, steps: int, unit: str = "updates") -> list[str]:
    """A learning-rate warm-up that takes more than half of the run: the model trains at a small
    learning rate most of the time (the reference DT warms up over 10% of its run)."""
    if warmup_steps * 2 <= steps:
        return []
    return [
        f"agent.warmup_steps={warmup_steps} is more than half of the run's {steps} {unit}: "
        f"the learning rate stays low most of the run; set --set agent.warmup_steps="
        f"{max(steps // 10, 1)} (10% of the run, as the reference DT)"
    ]


def policy_options(cls: type, options: dict[str, Any]) -> Any:
    """`options` (from `--policy k=v`, `--set policy.k=v` or keywords) as the agent's options
    dataclass `cls`, types converted; an unknown name is a `ValueError` listing the valid ones."""
    return from_dict(cls, options, "policy")
