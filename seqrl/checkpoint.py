"""The run-directory format, read by `train/` (resume) and `export.py` (load_policy) alike.

```
RUN_DIR/
  config.yaml                 the resolved run config (algorithm, agent config, spec, training)
  metrics.jsonl               one JSON object per logged step
  tb/                         TensorBoard event files
  .lock                       held (flock) by the process training into the run
  checkpoints/
    step_00010000/
      model.safetensors       model weights (and normalization buffers): all that inference needs
      state.safetensors       every tensor of the training state (optimizer, RNG keys, ...)
      state.json              the rest of the training state, tensors named by key
      meta.yaml               step, time, format and the sha256 of each file above
    latest                    the name of the newest complete checkpoint (a hint)
```

Nothing here is ever unpickled: weights and state tensors are safetensors, everything else is
YAML or JSON, and every checkpoint file is checked against the sha256 recorded in `meta.yaml`
at save time before it is used (`verify_checkpoint`).

Every write is atomic: a checkpoint is written into a dot-prefixed temporary folder, synced, and
renamed into place; files are replaced with `os.replace`. An interrupted write leaves only
dot-prefixed leftovers, which `clean_leftovers` removes on resume. The newest checkpoint that
verifies is the one used (`find_checkpoint`): a missing or damaged `latest`, or a damaged newest
checkpoint, falls back to the newest valid one. Files are created with the user's umask.

Agents follow one convention: `agent.state_dict()` returns `{"model": {name: Tensor}, ...}`;
`"model"` goes to `model.safetensors`, everything else to `state.*`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
META_FILE = "meta.yaml"
LATEST = "latest"
LOCK_FILE = ".lock"
FORMAT = 2
CHECKPOINT_FILES = (MODEL_FILE, STATE_TENSORS, STATE_JSON)


class CheckpointError(OSError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""


# ---------------------------------------------------------------------------------------- files


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{random.getrandbits(32):08x}.tmp")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """`safetensors` `save_file`, with the file's mode set from the user's umask (safetensors
    creates it 0600)."""
    save_file(tensors, str(path))
    os.chmod(path, 0o666 & ~current_umask())


def _sync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`.

    The file is created with `open`, so it gets the user's umask like any other file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """`write_bytes_atomic` for text (UTF-8)."""
    write_bytes_atomic(path, text.encode())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------- config


def save_config(run_dir: str | Path, config: dict[str, Any]) -> None:
    """Write the resolved run config as YAML."""
    write_text_atomic(Path(run_dir) / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))


def load_config(run_dir: str | Path) -> dict[str, Any]:
    """Read and check a run's config.yaml; one-line errors for a folder that is not a run or a
    config that is garbled."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {run_dir} is not a seqrl run directory (one is made by "
            "`seqrl train ...`; pass the folder that holds config.yaml and checkpoints/)"
        )
    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ValueError(
            f"{path}: not valid YAML{line}, the run's config is damaged. Fix: repair the file "
            "(or copy it from a backup of the run)"
        ) from None
    problems = _config_problems(config)
    if problems:
        raise ValueError(f"{path}: {problems}. Fix: repair the file (it is written by seqrl train)")
    return config


def _config_problems(config: Any) -> str:
    if not isinstance(config, dict):
        return f"expected a mapping of settings, got {type(config).__name__}"
    if not isinstance(config.get("algo"), str):
        return "no 'algo' name"
    for section in ("agent", "train", "spec"):
        if section in config and not isinstance(config[section], dict):
            return f"section '{section}' is not a mapping"
    return ""


def has_config(run_dir: str | Path) -> bool:
    return (Path(run_dir) / CONFIG_FILE).is_file()


# ---------------------------------------------------------------------------------------- lock


_HELD: dict[Path, list[Any]] = {}  # resolved run dir -> [lock file handle, depth]


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold `RUN_DIR/.lock` while training into a run; a second process is refused.

    An advisory `flock`: the kernel drops it when the holding process ends in any way (SIGKILL
    included), so a lock file left behind by a dead process is simply taken over; the pid and
    host written inside only serve the error message. Re-entrant within one process.
    """
    import fcntl

    folder = Path(run_dir).resolve()
    if folder in _HELD:
        _HELD[folder][1] += 1
        try:
            yield
        finally:
            _HELD[folder][1] -= 1
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115  (closed below)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise FileExistsError(
            f"{run_dir} is in use by {holder}: two processes must not train into one run. "
            "Fix: wait for it to finish (or stop it), or choose another --run-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {os.uname().nodename}\n")
    handle.flush()
    _HELD[folder] = [handle, 1]
    try:
        yield
    finally:
        del _HELD[folder]
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()
        # a start that failed before writing anything (bad dataset, unknown env) leaves no
        # empty run directory behind to confuse the next start
        if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            (folder / LOCK_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()


def clean_leftovers(run_dir: str | Path) -> list[str]:
    """Remove what interrupted writes left behind (dot-prefixed temporary files and folders);
    returns their names. Call it only while holding `run_lock`."""
    removed = []
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir / CHECKPOINTS):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(str(path.relative_to(run_dir)))
    return removed


# ---------------------------------------------------------------------------------------- state


def rng_state() -> dict[str, Any]:
    """The global RNG states (Python, NumPy legacy, torch CPU) as checkpointable data."""
    np_state = np.random.get_state()
    return {
        "python": repr(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state()` returned."""
    import ast

    random.setstate(ast.literal_eval(state["python"]))
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)  # stored as int64: any safetensors
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])


def encode_state(value: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """Training state (nested dicts/lists/tuples of tensors, arrays and plain data) as JSON data;
    tensors go to `tensors` and are named in the JSON by `{"__tensor__": key}`."""
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().cpu().clone().contiguous()  # clone: no aliasing on save
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value).copy())
        return {"__ndarray__": key}
    if isinstance(value, np.generic):
        return {"__npscalar__": value.dtype.str, "value": value.item()}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: encode_state(v, tensors, f"{path}/{k}") for k, v in value.items()}
        return {
            "__dict__": [
                [encode_state(k, tensors, path), encode_state(v, tensors, f"{path}/{k}")]
                for k, v in value.items()
            ]
        }
    if isinstance(value, tuple):
        return {"__tuple__": [encode_state(v, tensors, f"{path}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode_state(v, tensors, f"{path}/{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"cannot checkpoint {type(value).__name__} at state{path or '/'}: training state must be "
        "tensors, NumPy arrays and plain data (dict, list, tuple, str, int, float, bool, None)"
    )


def decode_state(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `encode_state`; a `ValueError` for anything it did not write."""
    if isinstance(value, list):
        return [decode_state(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value or "__ndarray__" in value:
        key = value.get("__tensor__", value.get("__ndarray__"))
        if key not in tensors:
            raise ValueError(f"state tensor {key!r} is missing")
        return tensors[key] if "__tensor__" in value else tensors[key].numpy()
    if "__npscalar__" in value:
        return np.dtype(value["__npscalar__"]).type(value["value"])
    if "__tuple__" in value:
        return tuple(decode_state(v, tensors) for v in value["__tuple__"])
    if "__dict__" in value:
        return {decode_state(k, tensors): decode_state(v, tensors) for k, v in value["__dict__"]}
    return {k: decode_state(v, tensors) for k, v in value.items()}


# ---------------------------------------------------------------------------------------- write


def _step_name(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    agent_state: dict[str, Any],
    extra: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Atomically write checkpoint `step` and point `latest` at it; keep the newest `keep`.

    `agent_state` follows the agent convention (`"model"` -> safetensors); `extra` holds loop
    state (sampler, RNG). Returns the checkpoint folder. A failed write (a full disk) removes
    what it wrote and raises `CheckpointError` naming the previous checkpoint, which is intact.
    """
    if "model" not in agent_state:
        raise ValueError("agent.state_dict() must hold the model weights under the key 'model'")
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    name = _step_name(step)
    tmp = _temporary_name(root / name)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        # clone: safetensors refuses tensors that share memory (tied or aliased parameters)
        weights = {
            k: v.detach().cpu().clone().contiguous() for k, v in agent_state["model"].items()
        }
        save_tensors(weights, tmp / MODEL_FILE)
        tensors: dict[str, torch.Tensor] = {}
        rest = {k: v for k, v in agent_state.items() if k != "model"}
        structure = encode_state({"agent": rest, "loop": extra}, tensors)
        save_tensors(tensors, tmp / STATE_TENSORS)
        (tmp / STATE_JSON).write_text(json.dumps(structure))
        meta = {
            "step": step,
            "time": time.time(),
            "format": FORMAT,
            "sha256": {f: sha256_of(tmp / f) for f in CHECKPOINT_FILES},
        }
        (tmp / META_FILE).write_text(yaml.safe_dump(meta, sort_keys=False))
        for path in tmp.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        final = root / name
        if final.exists():
            _remove(final)
        os.replace(tmp, final)
        _sync_dir(root)
        write_text_atomic(root / LATEST, name + "\n")
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = find_checkpoint(run_dir).folder
        kept = (
            f"the previous checkpoint {previous.name} is intact"
            if previous
            else "no earlier checkpoint exists"
        )
        raise CheckpointError(
            f"could not write checkpoint {name} in {root}: {err.strerror or err}; {kept}. Fix: "
            f"free disk space (or fix permissions), then continue with --resume {run_dir}"
        ) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        _remove(old)
    return final


def _remove(folder: Path) -> None:
    """Delete a folder so that an interruption leaves only a dot-prefixed leftover."""
    trash = _temporary_name(folder)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


# ---------------------------------------------------------------------------------------- read


def verify_checkpoint(folder: str | Path) -> int:
    """Check a checkpoint folder against the sha256 its `meta.yaml` recorded; returns its step.

    Raises a one-line `ValueError` naming the damaged or missing file (`FileNotFoundError` for
    a folder that is not a checkpoint).
    """
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        if (folder / "training_state.pt").is_file():
            raise ValueError(
                f"{folder}: written by an older seqrl (training_state.pt, a pickle format that "
                "is no longer read). Fix: retrain, or load it with that seqrl version"
            )
        raise FileNotFoundError(f"{folder}: not a seqrl checkpoint folder (no {META_FILE})")
    try:
        meta = yaml.safe_load(meta_path.read_text())
        step, hashes = int(meta["step"]), dict(meta["sha256"])
    except Exception:
        raise ValueError(
            f"{meta_path}: damaged (not the YAML seqrl writes). Fix: delete the folder {folder}; "
            "training resumes from an earlier checkpoint"
        ) from None
    for name in CHECKPOINT_FILES:
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{folder}: {name} is missing. Fix: delete the folder {folder}")
        if sha256_of(path) != hashes.get(name):
            raise ValueError(
                f"{path}: damaged or replaced (its sha256 differs from the one recorded when it "
                f"was saved). Fix: delete the folder {folder} or restore the file"
            )
    return step


@dataclass
class CheckpointChoice:
    """The newest valid checkpoint of a run, and what was passed over to find it."""

    folder: Path | None
    step: int = 0
    skipped: list[str] = field(default_factory=list)
    """One line per damaged checkpoint or pointer passed over."""


def find_checkpoint(run_dir: str | Path) -> CheckpointChoice:
    """The newest checkpoint of a run that verifies; `latest` is only a hint."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return CheckpointChoice(None)
    skipped = []
    folders = sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)
    for folder in folders:
        try:
            step = verify_checkpoint(folder)
        except (ValueError, OSError) as err:
            skipped.append(str(err).splitlines()[0])
            continue
        pointer = root / LATEST
        try:
            named = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):
            named = None
        if named != folder.name:
            skipped.append(f"{pointer}: missing or damaged, using {folder.name}")
        return CheckpointChoice(folder, step, skipped)
    return CheckpointChoice(None, 0, skipped)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest valid checkpoint folder of a run, or None if it has none."""
    return find_checkpoint(run_dir).folder


def checkpoint_step(folder: Path) -> int:
    with open(folder / META_FILE) as handle:
        return int(yaml.safe_load(handle)["step"])


def load_model_weights(folder: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The model weights of a checkpoint folder (safetensors, verified against its sha256)."""
    folder = Path(folder)
    verify_checkpoint(folder)
    return _load_tensors(folder / MODEL_FILE, device)


def _load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None


def load_checkpoint(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(agent_state, loop_state) of a checkpoint folder, for `agent.load_state_dict` and resume."""
    folder = Path(folder)
    verify_checkpoint(folder)
    tensors = _load_tensors(folder / STATE_TENSORS)
    try:
        state = decode_state(json.loads((folder / STATE_JSON).read_text()), tensors)
        agent_state, loop_state = dict(state["agent"]), state["loop"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{folder / STATE_JSON}: not the training state seqrl writes ({err})"
        ) from None
    agent_state["model"] = _load_tensors(folder / MODEL_FILE)
    return agent_state, loop_state
