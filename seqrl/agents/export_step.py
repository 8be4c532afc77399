"""The single-step function an agent hands to `seqrl export`: every piece of state explicit.

A robot's ONNX Runtime or TorchScript loop cannot keep Python objects between calls, so an
exported policy is one pure step with its whole context passed in and handed back:

```
            obs (B, *obs_shape)    reward (B,)    state.<name> ...      [noise (B, *noise_shape)]
                    |                  |               |                       |
                    v                  v               v                       v
           +-------------------------------------------------------------------------+
           |  ExportStep.forward: normalize, embed, backbone step, head, scale action |
           +-------------------------------------------------------------------------+
                    |                                  |
                    v                                  v
            action (B, *act_shape)               next_state.<name> ...   (fed back next call)
```

- `obs` is in raw env units and `action` in env units (normalization, squashing, scaling and
  argmax inside the graph). `reward` is the previous step's reward; agents that ignore it still
  take it, so every exported policy has the same inputs.
- Each agent module subclasses `ExportStep` and says what its state is by `initial_row()`: one
  env's fresh row of every state tensor (name -> tensor of the per-env shape). Starting an episode
  in env i means writing those rows into row i of every state input; nothing else resets.
- Names are dotted (`memory.k.0`, `returns_to_go`); the exported graph calls them
  `state.<name>` / `next_state.<name>`.
- A backbone's state (`seqrl.nn`: a dict of batch-first tensors, the zero row fresh) becomes
  `memory.<key>` state through `backbone_rows` / `backbone_step`.

`seqrl.export_graph` traces the module, writes the files and checks them; `seqrl.runtime` drives
them with NumPy alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqrl.core import EnvSpec
from seqrl.nn.base import State

MEMORY = "memory."
"""Prefix of the state tensors that hold a backbone's state."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an exported step, as `policy.json` lists it."""

    name: str
    """The name in the graph (`obs`, `state.timestep`, `next_state.memory.h`, ...)."""
    shape: tuple[int | str, ...]
    """Shape with the batch dimension as "B"."""
    dtype: str
    """NumPy dtype name: float32, int64 or bool."""
    meaning: str
    """What it holds, in words."""

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "meaning": self.meaning,
        }


_BACKBONE_MEANINGS: tuple[tuple[str, str], ...] = (
    (r"pos", "GPT: tokens written to the KV cache this episode"),
    (
        r"k\.(\d+)",
        "GPT: cached attention keys of layer {0} (H, S, Dh); a ring of S slots with a window",
    ),
    (r"v\.(\d+)", "GPT: cached attention values of layer {0} (H, S, Dh)"),
    (r"length", "GTrXL: entries in the memory (at most M)"),
    (r"memory\.(\d+)", "GTrXL: the previous M inputs of layer {0}, oldest first, right-aligned"),
    (r"h", "LSTM/GRU: hidden state per layer (L, D)"),
    (r"c", "LSTM: cell state per layer (L, D)"),
    (r"(\d+)\.C", "xLSTM block {0}: mLSTM matrix memory (H, Dh, Dh)"),
    (r"(\d+)\.n", "xLSTM block {0}: normalizer state"),
    (r"(\d+)\.m", "xLSTM block {0}: stabilizer state"),
    (r"(\d+)\.conv", "xLSTM block {0}: last K-1 inputs of the causal convolution"),
    (r"(\d+)\.(h|c)", "xLSTM block {0}: sLSTM {1} state"),
)


def backbone_meaning(key: str) -> str:
    """What backbone state `key` holds (a generic line for keys of backbones added later)."""
    for pattern, text in _BACKBONE_MEANINGS:
        match = re.fullmatch(pattern, key)
        if match:
            return text.format(*match.groups())
    return f"backbone state {key!r} (all zeros = fresh)"


_DTYPES = {torch.float32: "float32", torch.int64: "int64", torch.bool: "bool"}


class ExportStep(nn.Module):
    """Base of every agent's exportable step: `forward(obs, reward, *state[, noise])
    -> (action, *next_state)`, pure (no buffer changes), batch size B free.

    Subclasses set `spec`, `description` and `meanings` (state name -> meaning; backbone
    state is described by `backbone_meaning`), implement `initial_row()` and `forward`, and set
    `noise_shape` (per env) when the action is sampled (the noise then comes in as an input).
    """

    description: str = ""
    noise_shape: tuple[int, ...] | None = None

    def __init__(self, spec: EnvSpec) -> None:
        super().__init__()
        self.spec = spec
        self.meanings: dict[str, str] = {}

    # ---- what a subclass provides -----------------------------------------------------------
    def initial_row(self) -> dict[str, Tensor]:
        """One env's fresh state: name -> tensor of the per-env shape (no batch dimension)."""
        raise NotImplementedError

    # ---- derived ---------------------------------------------------------------------------
    def state_names(self) -> list[str]:
        """The state's names, in the order of the graph's state inputs and outputs."""
        if "_state_names" not in self.__dict__:  # computed once, outside any trace
            self.__dict__["_state_names"] = list(self.initial_row())
        return self.__dict__["_state_names"]

    def unpack(self, state: tuple[Tensor, ...]) -> dict[str, Tensor]:
        """forward's positional state tensors as a dict, in `initial_row` order."""
        names = self.state_names()
        if len(state) != len(names):
            raise ValueError(
                f"{type(self).__name__} takes {len(names)} state tensors ({', '.join(names)}); "
                f"got {len(state)}"
            )
        return dict(zip(names, state, strict=True))

    def pack(self, state: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """The next state in `initial_row` order."""
        return tuple(state[name] for name in self.state_names())

    def example_inputs(self, batch_size: int, seed: int = 0) -> tuple[Tensor, ...]:
        """Inputs for tracing: random observations and rewards, every env at a fresh state."""
        generator = torch.Generator().manual_seed(seed)
        obs = torch.randn((batch_size, *self.spec.obs_shape), generator=generator)
        reward = torch.randn(batch_size, generator=generator)
        rows = self.initial_row()
        state = [row[None].expand(batch_size, *row.shape).clone() for row in rows.values()]
        noise = []
        if self.noise_shape is not None:
            noise = [torch.randn((batch_size, *self.noise_shape), generator=generator)]
        return (obs, reward, *state, *noise)

    def input_specs(self) -> list[TensorSpec]:
        """Every input of the graph: obs, reward, state.<name>..., noise."""
        obs_meaning = "observation in raw env units (normalized inside the graph)"
        specs = [
            TensorSpec("obs", ("B", *self.spec.obs_shape), "float32", obs_meaning),
            TensorSpec(
                "reward", ("B",), "float32", "reward of the previous step (0 after a reset)"
            ),
        ]
        specs += [
            TensorSpec(f"state.{name}", ("B", *row.shape), _dtype(row), self._meaning(name))
            for name, row in self.initial_row().items()
        ]
        if self.noise_shape is not None:
            meaning = "standard normal noise for this step's sampling"
            specs.append(TensorSpec("noise", ("B", *self.noise_shape), "float32", meaning))
        return specs

    def output_specs(self) -> list[TensorSpec]:
        """Every output: action, then next_state.<name> in the order of the state inputs."""
        dtype = "int64" if self.spec.discrete else "float32"
        meaning = "action index" if self.spec.discrete else "action in env units (inside the Box)"
        specs = [TensorSpec("action", ("B", *self.spec.action_shape), dtype, meaning)]
        for spec in self.input_specs():
            if spec.name.startswith("state."):
                name = "next_" + spec.name
                specs.append(TensorSpec(name, spec.shape, spec.dtype, "feed back as " + spec.name))
        return specs

    def _meaning(self, name: str) -> str:
        if name in self.meanings:
            return self.meanings[name]
        if name.startswith(MEMORY):
            return backbone_meaning(name[len(MEMORY) :])
        return name


def _dtype(tensor: Tensor) -> str:
    if tensor.dtype not in _DTYPES:
        raise ValueError(
            f"exported state must be float32, int64 or bool; got {tensor.dtype}. Convert it in "
            "the agent's initial_row()"
        )
    return _DTYPES[tensor.dtype]


def backbone_rows(backbone: nn.Module) -> dict[str, Tensor]:
    """A backbone's fresh state for one env as `memory.<key>` rows (no batch dimension)."""
    device = next(backbone.parameters()).device
    return {MEMORY + key: value[0] for key, value in backbone.initial_state(1, device).items()}


def backbone_state(state: dict[str, Tensor]) -> State:
    """The backbone's state out of a step's state dict, cloned: `GPT.step` writes its cache in
    place, and an exported graph must never modify its inputs."""
    return {
        name[len(MEMORY) :]: tensor.clone()
        for name, tensor in state.items()
        if name.startswith(MEMORY)
    }


def memory_rows(state: State) -> dict[str, Tensor]:
    """A backbone state as `memory.<key>` entries of a step's state dict."""
    return {MEMORY + key: tensor for key, tensor in state.items()}
