"""The seqrl side of the d3rlpy comparison: d3rlpy's own virtual environment, the driver process
(`d3rlpy_driver.py`, spoken to over a pipe) and a seqrl `Policy` that asks it for actions.

Why a pipe: d3rlpy pins an older Gymnasium than seqrl's, so it lives in its own venv. Hopper-v5
episodes are stepped by `seqrl.envs.evaluate` in seqrl's venv for both libraries (same Gymnasium,
same MuJoCo, same episode seeds); the d3rlpy process only turns observations and rewards into
actions with its `StatefulTransformerWrapper`, one per env slot.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrl.core import PolicyStep

DRIVER = Path(__file__).with_name("d3rlpy_driver.py")
D3RLPY_SPEC = "d3rlpy==2.8.1"
TORCH_SPEC = "torch==2.13.0"  # the CPU build pinned in seqrl's Makefile, installed first


def _importable(python: Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run(
        [str(python), "-c", "import d3rlpy, h5py"], capture_output=True, text=True, check=False
    )
    return probe.returncode == 0


def ensure_d3rlpy(
    venv: Path,
    python: str | None = None,
    torch_spec: str = TORCH_SPEC,
    d3rlpy_spec: str = D3RLPY_SPEC,
    log=print,
) -> Path:
    """A Python interpreter that can import d3rlpy: `python` if given, else `venv`'s, creating
    the venv (torch first, then d3rlpy and h5py) when d3rlpy is not importable there."""
    if python is not None:
        if not _importable(Path(python)):
            raise FileNotFoundError(
                f"--d3rlpy-python {python}: cannot `import d3rlpy, h5py` there; drop the flag to "
                f"let the benchmark create its own venv under {venv}"
            )
        return Path(python)
    interpreter = venv / "bin" / "python"
    if _importable(interpreter):
        return interpreter
    begin = time.perf_counter()
    log(f"installing {d3rlpy_spec} into its own venv {venv} (torch first: {torch_spec}) ...")
    if not interpreter.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(interpreter), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for spec in ([torch_spec], [d3rlpy_spec, "h5py"]):
        done = subprocess.run(pip + spec, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"pip install {' '.join(spec)} into {venv} failed:\n{done.stderr[-3000:]}"
            )
    if not _importable(interpreter):
        raise RuntimeError(f"d3rlpy was installed into {venv} but does not import")
    log(f"d3rlpy venv ready in {time.perf_counter() - begin:.0f} s")
    return interpreter


class D3rlpyProcess:
    """One driver process; `call(cmd, **fields)` sends a command and returns its answer."""

    def __init__(self, python: Path, threads: int, log_path: Path | None = None) -> None:
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)  # nothing of seqrl's venv leaks into d3rlpy's
        # closed in close()
        self._log = open(log_path, "a") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(python), str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
            env=env,
        )

    def call(self, cmd: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the d3rlpy driver exited (code {self.proc.poll()}) during {cmd!r}; "
                "see its log (d3rlpy-*.log in the output folder)"
            )
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"d3rlpy driver, {cmd}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError, BrokenPipeError, OSError):
                self.call("quit")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self) -> D3rlpyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dt_settings(agent: dict[str, Any]) -> dict[str, Any]:
    """The driver's `init` fields from a resolved seqrl `agent` config section (same model)."""
    keys = (
        "context_len", "width", "layers", "heads", "dropout", "activation", "lr",
        "weight_decay", "warmup_steps", "grad_clip", "batch_size", "return_scale", "max_timestep",
    )  # fmt: skip
    return {key: agent[key] for key in keys}


class D3rlpyPolicy:
    """A seqrl `Policy` (reset/act) whose actions come from d3rlpy's stateful DT wrappers."""

    def __init__(self, process: D3rlpyProcess, num_envs: int, target_return: float) -> None:
        self.process, self.num_envs = process, num_envs
        process.call("policy", num_envs=num_envs, target_return=target_return)

    def reset(self, done: np.ndarray | None = None) -> None:
        rows = None if done is None else [bool(d) for d in np.asarray(done)]
        self.process.call("reset", done=rows)

    def act(self, obs: np.ndarray, reward: np.ndarray | None = None) -> PolicyStep:
        answer = self.process.call(
            "act",
            obs=np.asarray(obs, dtype=np.float64).tolist(),
            reward=None if reward is None else np.asarray(reward, dtype=np.float64).tolist(),
        )
        return PolicyStep(action=torch.as_tensor(answer["action"], dtype=torch.float32))
