"""Run an exported policy (`seqrl export`) with NumPy and ONNX Runtime: no torch, no seqrl code.

```python
import seqrl

policy = seqrl.load_exported("exports/hopper-dt")   # single env; num_envs=N for a batch
policy.reset()
action = policy.act(obs)                             # obs (*obs_shape,) -> action (*act_shape,)
action = policy.act(obs, reward)                     # reward of the previous step
action = policy.act(obs, reward, noise)              # stochastic exports: explicit noise
```

This module imports only the standard library, NumPy and (when a policy is loaded) onnxruntime;
a TorchScript export is run through torch, imported only then. It knows nothing of agents: all
it reads is `policy.json`, the contract every export follows (written by `seqrl.export_graph`):

- inputs `obs` (B, *obs_shape) float32, `reward` (B,) float32, `state.<name>` for every piece of
  state, and `noise` (B, *noise_shape) where the agent samples; outputs `action` and
  `next_state.<name>` for every `state.<name>` (`policy.json`'s `state` pairs);
- `initial_state.npz` holds one env's fresh row of every state input: starting an episode in
  env i is writing those rows into row i;
- `files` holds the sha256 of every other file of the export; a file that does not match (edited,
  truncated, replaced) is refused before anything is loaded.

The same loop in C++ is: feed the inputs, copy each `next_state.<name>` output into the
`state.<name>` input for the next call, overwrite row i with the initial rows when env i resets.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

POLICY_JSON = "policy.json"
FORMAT = "seqrl-exported-policy"
VERSION = 1

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_policy_json(folder: str | Path) -> dict[str, Any]:
    """`policy.json` of an export folder, after checking the sha256 of every file it lists."""
    folder = Path(folder)
    path = folder / POLICY_JSON
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {folder} is not an exported policy (make one with "
            "`seqrl export RUN_DIR --format onnx --out DIR`)"
        )
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); export the policy again") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: 'format' is not {FORMAT!r}; export the policy again")
    if meta.get("version") != VERSION:
        raise ValueError(
            f"{path}: version {meta.get('version')!r}, this seqrl reads version {VERSION}; "
            "export the policy again with this seqrl"
        )
    for name, expected in meta["files"].items():
        file = folder / name
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing; copy the whole export folder")
        actual = sha256_file(file)
        if actual != expected:
            raise ValueError(
                f"{file}: sha256 mismatch (policy.json records {expected[:12]}..., the file has "
                f"{actual[:12]}...): the file was changed or truncated; export the policy again"
            )
    return meta


def _onnx_runner(path: Path, output_names: list[str], threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(output_names, feeds)


def _torchscript_runner(path: Path, input_names: list[str]) -> Runner:
    import torch  # only TorchScript exports need torch

    module = torch.jit.load(str(path), map_location="cpu")

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            outputs = module(
                *(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in input_names)
            )
        return [tensor.numpy() for tensor in outputs]

    return run


class ExportedPolicy:
    """A batched exported policy over N envs: `reset(done)`, then `act(obs, reward)` per step.

    The state lives here as NumPy arrays (B, *shape) named as the graph's state inputs.
    `threads`: ONNX Runtime intra-op threads (1 suits a control loop). `seed`: a stochastic
    export (`policy.json`'s `noise` not null: diffusion) gets its `noise` input from
    `numpy.random.default_rng(seed)`, one (B, *noise_shape) standard normal draw per `act`,
    unless `act` is given `noise`.
    """

    def __init__(
        self, folder: str | Path, num_envs: int = 1, *, threads: int = 1, seed: int = 0
    ) -> None:
        folder = Path(folder)
        self.meta = meta = read_policy_json(folder)
        self.num_envs = num_envs
        self.input_names = [spec["name"] for spec in meta["inputs"]]
        self.output_names = [spec["name"] for spec in meta["outputs"]]
        self.pairs = [(pair["input"], pair["output"]) for pair in meta["state"]]
        with np.load(folder / meta["initial_state_file"], allow_pickle=False) as rows:
            self.initial = {name: rows[name] for name, _ in self.pairs}
        self.obs_shape = tuple(meta["observation_space"]["shape"])
        self.noise = meta.get("noise")
        self.rng = np.random.default_rng(seed)
        model = folder / meta["model_file"]
        if meta["runtime"] == "onnx":
            self._run = _onnx_runner(model, self.output_names, threads)
        else:
            self._run = _torchscript_runner(model, self.input_names)
        self.state = {
            name: np.repeat(row[None], num_envs, axis=0) for name, row in self.initial.items()
        }

    def reset(self, done: np.ndarray | None = None) -> None:
        """Start new episodes in the envs where `done` (B,) is True; None = every env."""
        rows = np.ones(self.num_envs, dtype=bool) if done is None else np.asarray(done, bool)
        if rows.shape != (self.num_envs,):
            raise ValueError(
                f"reset(done) got shape {rows.shape} for {self.num_envs} envs; pass one bool per "
                "env, or None"
            )
        for name, row in self.initial.items():
            self.state[name][rows] = row

    def act(
        self, obs: np.ndarray, reward: np.ndarray | None = None, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """obs (B, *obs_shape) raw; reward (B,) of the previous step (None: zeros) -> action
        (B, *act_shape). `noise` overrides the drawn noise of a stochastic export."""
        obs = np.asarray(obs, dtype=np.float32)
        if obs.shape != (self.num_envs, *self.obs_shape):
            raise ValueError(
                f"act: obs has shape {obs.shape}, this policy takes {(self.num_envs, *self.obs_shape)}"
                f" ({self.num_envs} envs); load it with num_envs={obs.shape[0] if obs.ndim else 1}"
            )
        if reward is None:
            reward = np.zeros(self.num_envs, dtype=np.float32)
        feeds = {"obs": obs, "reward": np.asarray(reward, dtype=np.float32).reshape(-1)}
        feeds.update(self.state)
        if self.noise is not None:
            shape = (self.num_envs, *self.noise["shape"][1:])
            drawn = self.rng.standard_normal(shape) if noise is None else noise
            feeds["noise"] = np.asarray(drawn, dtype=np.float32)
            if feeds["noise"].shape != shape:
                raise ValueError(f"act: noise has shape {feeds['noise'].shape}; expected {shape}")
        outputs = dict(zip(self.output_names, self._run(feeds), strict=True))
        for state_input, state_output in self.pairs:
            self.state[state_input] = outputs[state_output]
        return outputs["action"]


class SingleEnvPolicy:
    """One env, unbatched NumPy in and out: `reset()`, then `act(obs, reward) -> action`."""

    def __init__(self, policy: ExportedPolicy) -> None:
        self.policy = policy
        self.meta = policy.meta

    def reset(self) -> None:
        self.policy.reset(None)

    def act(
        self, obs: np.ndarray, reward: float | None = None, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """obs (*obs_shape,) -> action (*act_shape,); `reward` of the previous step; `noise`
        (*noise_shape,) overrides the drawn noise of a stochastic export."""
        batch_reward = None if reward is None else np.array([reward], dtype=np.float32)
        batch_noise = None if noise is None else np.asarray(noise)[None]
        return self.policy.act(np.asarray(obs)[None], batch_reward, batch_noise)[0]


def load_exported(
    folder: str | Path, num_envs: int | None = None, *, threads: int = 1, seed: int = 0
) -> ExportedPolicy | SingleEnvPolicy:
    """An exported policy: single env (NumPy in and out, unbatched) with `num_envs=None`, else the
    batched `ExportedPolicy` over `num_envs` envs. Every file is checked against the sha256 that
    `policy.json` records before it is loaded."""
    policy = ExportedPolicy(folder, num_envs or 1, threads=threads, seed=seed)
    return SingleEnvPolicy(policy) if num_envs is None else policy
