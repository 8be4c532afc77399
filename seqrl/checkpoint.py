"""The run-directory format, read by `train/` (resume) and `export.py` (load_policy) alike.

```
RUN_DIR/
  config.yaml                 the resolved run config (algorithm, agent config, spec, training)
  metrics.jsonl               one JSON object per logged step
  tb/                         TensorBoard event files
  checkpoints/
    step_00010000/
      model.safetensors       model weights (and normalization buffers): all that inference needs
      training_state.pt       optimizer, scheduler, sampler and RNG state (tensors and plain data)
      meta.yaml               step and wall-clock time
    latest                    the name of the newest complete checkpoint
```

Every write is atomic: a checkpoint is written into a temporary folder and renamed into place,
and `latest` is replaced with `os.replace`, so an interrupted run never leaves a half-written
checkpoint that `latest` points to. `training_state.pt` is read with `torch.load(weights_only=True)`:
a checkpoint never unpickles code.

Agents follow one convention: `agent.state_dict()` returns `{"model": {name: Tensor}, ...}`;
`"model"` goes to safetensors, everything else to `training_state.pt`.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
LATEST = "latest"


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a run's files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_config(run_dir: str | Path, config: dict[str, Any]) -> None:
    """Write the resolved run config as YAML."""
    write_text_atomic(Path(run_dir) / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))


def load_config(run_dir: str | Path) -> dict[str, Any]:
    """Read a run's config.yaml; a clear error when `run_dir` is not a seqrl run."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {run_dir} is not a seqrl run directory (one is made by "
            "`seqrl train ...`; pass the folder that holds config.yaml and checkpoints/)"
        )
    with open(path) as handle:
        return yaml.safe_load(handle)


def run_config(run_dir: Path, config: dict[str, Any] | None, resume: bool) -> dict[str, Any]:
    """The config a run starts from: read from `run_dir` on resume, else `config`, refusing to
    start a new run where one already is (so a finished or running run is never overwritten)."""
    if resume:
        return load_config(run_dir)
    if config is None:
        raise ValueError("a new run needs a config (resolve it from a preset and --set first)")
    if (run_dir / CONFIG_FILE).exists():
        raise FileExistsError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose "
            "another --run-dir"
        )
    return config


def rng_state() -> dict[str, Any]:
    """The global RNG states (Python, NumPy legacy, torch CPU) as checkpointable data."""
    np_state = np.random.get_state()
    return {
        "python": repr(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].copy()), "pos": int(np_state[2])},
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state()` returned."""
    import ast

    random.setstate(ast.literal_eval(state["python"]))
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy(), state["numpy"]["pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    agent_state: dict[str, Any],
    extra: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Atomically write checkpoint `step` and point `latest` at it; keep the newest `keep`.

    `agent_state` follows the agent convention (`"model"` -> safetensors); `extra` holds loop
    state (sampler, RNG). Returns the checkpoint folder.
    """
    if "model" not in agent_state:
        raise ValueError("agent.state_dict() must hold the model weights under the key 'model'")
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        # clone: safetensors refuses tensors that share memory (tied or aliased parameters)
        weights = {k: v.detach().cpu().clone() for k, v in agent_state["model"].items()}
        save_file(weights, str(tmp / MODEL_FILE))
        rest = {k: v for k, v in agent_state.items() if k != "model"}
        torch.save({"agent": rest, "loop": extra}, tmp / STATE_FILE)
        (tmp / "meta.yaml").write_text(yaml.safe_dump({"step": step, "time": time.time()}))
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / LATEST, name + "\n")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None if it has none yet."""
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    return folder if (folder / MODEL_FILE).is_file() else None


def checkpoint_step(folder: Path) -> int:
    with open(folder / "meta.yaml") as handle:
        return int(yaml.safe_load(handle)["step"])


def load_model_weights(folder: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The model weights of a checkpoint folder (safetensors, no unpickling)."""
    return load_file(str(Path(folder) / MODEL_FILE), device=str(device))


def load_checkpoint(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(agent_state, loop_state) of a checkpoint folder, for `agent.load_state_dict` and resume."""
    folder = Path(folder)
    state = torch.load(folder / STATE_FILE, weights_only=True, map_location="cpu")
    agent_state = dict(state["agent"])
    agent_state["model"] = load_model_weights(folder)
    return agent_state, state["loop"]
