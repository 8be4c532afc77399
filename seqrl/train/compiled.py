"""`--compile`: `torch.compile` for the model forward of `update` and for every policy's `act`,
with a clean fallback, and which attention kernel a policy actually runs.

```
compile_agent(agent)           agent.model.compile()          in place: update's forward, the
                                                              window recompute of act, state
                                                              dict keys unchanged
  .policy(n, **options)        policy.act = torch.compile(act, dynamic=False)
                               (mode "reduce-overhead" on CUDA: CUDA graphs where the step's
                               shapes are static, e.g. the GPT's preallocated KV cache)
attention_kernels(policy, obs) the SDPA kernels one act() call dispatched (recorded)
```

Only the model forward is compiled in `update`, not the loss, backward and optimizer step:
`seqrl.nn.optim.optimizer_step` (gradient clipping, the data-parallel all-reduce, schedulers)
stays eager and shared by every agent. `act` is compiled whole: its tensor work, the in-place
updates of the policy's preallocated context and cache, and the NumPy conversion at its edge
(graph breaks where dynamo cannot follow).

Fallback: before compiling anything, `compile_available(backend)` compiles a two-op probe
function. Where that fails (no C++ compiler for inductor on a CPU, an unsupported Python) the
agent is returned unchanged and a one-line warning says why; errors while compiling an agent's
own code are bugs and are raised. The tests use the `aot_eager` backend (dynamo tracing and AOT
autograd, no code generation) so that the default suite stays fast; a slow test uses inductor.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from seqrl.checkpoint import rng_state, set_rng_state

ATTENTION_KERNELS = {
    "_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "_scaled_dot_product_flash_attention": "flash (CUDA)",
    "_scaled_dot_product_efficient_attention": "memory-efficient (CUDA)",
    "_scaled_dot_product_cudnn_attention": "cuDNN",
    "_scaled_dot_product_attention_math": "math",
    "flash_attn_with_kvcache": "flash-attn KV-cache kernel",
}
"""aten op names of the attention kernels -> what to call them in a log line."""


@functools.cache
def compile_available(backend: str = "inductor") -> str | None:
    """None when `torch.compile(backend=...)` works here, else why not (one line)."""
    try:
        probe = torch.compile(lambda x: torch.relu(x) * 2 + 1, backend=backend, dynamic=False)
        probe(torch.ones(4))
    except Exception as err:  # any failure to compile means: run eagerly
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"{type(err).__name__}: {first}"[:200]
    finally:
        torch._dynamo.reset()
    return None


def default_mode(device: torch.device | str) -> str | None:
    """ "reduce-overhead" (CUDA graphs) for per-step calls on a GPU; the default elsewhere."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else None


class CompiledAgent:
    """An agent whose model forward is compiled in place and whose policies' `act` is compiled.
    Everything else (update, state dicts, attributes) is the wrapped agent's."""

    def __init__(self, agent: Any, backend: str = "inductor", mode: str | None = None) -> None:
        self.agent, self.backend, self.mode = agent, backend, mode
        model = getattr(agent, "model", None)
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"--compile needs the agent's network as `agent.model` (an nn.Module); "
                f"{type(agent).__name__} has none. Fix: train without --compile"
            )
        model.compile(backend=backend, dynamic=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.agent, name)

    def update(self, batch: Any) -> dict[str, float]:
        return self.agent.update(batch)

    def policy(self, num_envs: int = 1, *, explore: bool = False, **options: Any) -> Any:
        policy = self.agent.policy(num_envs, explore=explore, **options)
        device = next(self.agent.model.parameters()).device
        mode = self.mode if self.mode is not None else default_mode(device)
        policy.act = torch.compile(policy.act, backend=self.backend, mode=mode, dynamic=False)
        return policy

    def state_dict(self) -> dict[str, Any]:
        return self.agent.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state)


def compile_agent(
    agent: Any, backend: str = "inductor", mode: str | None = None, say: Any = print
) -> Any:
    """`CompiledAgent(agent)` where `torch.compile` works here, else `agent` itself (eager),
    with a line saying which."""
    problem = compile_available(backend)
    if problem is not None:
        say(
            f"compile: torch.compile ({backend}) is not available here ({problem}); running eagerly"
        )
        return agent
    say(f"compile: model forward and policy act compiled with torch.compile ({backend})")
    return CompiledAgent(agent, backend, mode)


class _OpRecorder(TorchDispatchMode):
    """Records the name of every aten op dispatched (after composite ops like SDPA chose their
    kernel), without the profiler's start/stop messages."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.names.add(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def attention_kernels(policy: Any, obs: np.ndarray) -> list[str]:
    """The attention kernels one `policy.act(obs)` call runs, named as in `ATTENTION_KERNELS`
    (an empty list for a policy without attention). The global RNG states are restored after
    the call, so probing does not change a training run."""
    saved = rng_state()
    try:
        with _OpRecorder() as recorder:
            policy.act(obs)
    finally:
        set_rng_state(saved)
    return sorted({label for op, label in ATTENTION_KERNELS.items() if op in recorder.names})


def attention_line(agent: Any, obs_shape: tuple[int, ...]) -> str:
    """`attention: flash (CPU)` for a fresh 1-env policy of `agent` acting on zeros (the
    global RNG states restored afterwards)."""
    saved = rng_state()
    try:
        kernels = attention_kernels(agent.policy(1), np.zeros((1, *obs_shape), np.float32))
    except Exception as err:  # the probe is informative only; it must not stop a run
        return f"attention: not probed ({type(err).__name__}: {err})"
    finally:
        set_rng_state(saved)
    return "attention: " + (", ".join(kernels) if kernels else "none (no attention in this policy)")


def prepare_agent(
    agent: Any, obs_shape: tuple[int, ...], compile: bool = False, say: Any = print
) -> Any:
    """What `seqrl train` does before training: log the attention kernel the policy runs
    (eager), then compile when asked (`--compile`; falls back to eager where it cannot)."""
    say(attention_line(agent, obs_shape) + " (eager act)")
    return compile_agent(agent, say=say) if compile else agent
