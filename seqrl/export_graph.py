"""Export a trained run as a single-step ONNX or TorchScript graph with its state explicit.

```
seqrl export RUN_DIR --format onnx --out DIR          (or: export_policy(RUN_DIR, "onnx", DIR))

DIR/
  policy.onnx | policy.pt    the step: (obs, reward, state.*[, noise]) -> (action, next_state.*)
  initial_state.npz          one env's fresh row of every state.* input
  policy.json                inputs/outputs (name, shape with B, dtype, meaning), state pairs,
                             spaces, agent, source run and checkpoint, sha256 of the files above
```

The agent's registry entry builds the step (`entry.export_step(agent, options)`, a
`seqrl.agents.export_step.ExportStep`); this module traces it (TorchScript tracer, also behind
the ONNX export: `dynamo=False`, opset 17, every input's dimension 0 dynamic), writes the files
and then checks them: the written file, driven by `seqrl.runtime` exactly as a robot would,
must give the eager step's actions and states over a rollout of 3 envs (a batch size the trace
never saw) with one env reset midway. What this guards against: state frozen into buffers,
Python branches on tensor values and Python ints baked into constants by the trace, an input
pruned from the graph.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrl.agents import get_agent_entry
from seqrl.agents.export_step import ExportStep
from seqrl.agents.registry import policy_options
from seqrl.checkpoint import checkpoint_step, load_config
from seqrl.export import checkpoint_folder, load_agent
from seqrl.runtime import FORMAT, POLICY_JSON, VERSION, ExportedPolicy, sha256_file

FORMATS = ("onnx", "torchscript")
MODEL_FILES = {"onnx": "policy.onnx", "torchscript": "policy.pt"}
INITIAL_STATE = "initial_state.npz"
OPSET = 17
TRACE_BATCH = 2
CHECK_STEPS = 24
CHECK_TOLERANCE = 1e-4


def build_step(run_dir: str | Path, **options: Any) -> tuple[ExportStep, dict[str, Any]]:
    """The exportable step of a run's latest checkpoint, or of a checkpoint folder given directly
    (eval mode, fp32, CPU), and the options it was built with (`config.yaml`'s `policy:` section overridden by `options`)."""
    agent, config = load_agent(run_dir)
    entry = get_agent_entry(config["algo"])
    if entry.export_step is None:
        raise ValueError(
            f"agent {entry.name!r} cannot be exported: its AgentEntry has no export_step "
            f"(add one in seqrl/agents/{entry.name.replace('-', '_')}.py)"
        )
    chosen = {**(config.get("policy") or {}), **options}
    step = entry.export_step(agent, policy_options(entry.options_cls, chosen))
    return step.eval(), chosen


def trace(step: ExportStep) -> torch.jit.ScriptModule:
    """The step traced into TorchScript from a fresh state of `TRACE_BATCH` envs."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(step, step.example_inputs(TRACE_BATCH), check_trace=False)


def write_onnx(step: ExportStep, path: Path) -> None:
    """The step as one ONNX file (opset 17, dynamic batch), with every declared input kept."""
    inputs = [spec.name for spec in step.input_specs()]
    outputs = [spec.name for spec in step.output_specs()]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            step,
            step.example_inputs(TRACE_BATCH),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes={name: {0: "B"} for name in inputs + outputs},
        )
    _keep_inputs(path, step)


def _keep_inputs(path: Path, step: ExportStep) -> None:
    """Put back the inputs the exporter pruned because the graph does not read them (`reward`
    for agents that ignore it), so every export has the inputs `policy.json` lists."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    kept = {value.name for value in model.graph.input}
    types = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "bool": TensorProto.BOOL}
    missing = [spec for spec in step.input_specs() if spec.name not in kept]
    if not missing:
        return
    for spec in missing:
        value = helper.make_tensor_value_info(spec.name, types[spec.dtype], list(spec.shape))
        model.graph.input.append(value)
    order = {spec.name: i for i, spec in enumerate(step.input_specs())}
    inputs = sorted(model.graph.input, key=lambda value: order.get(value.name, len(order)))
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_torchscript(step: ExportStep, path: Path) -> None:
    torch.jit.save(trace(step), str(path))


def export_policy(
    run_dir: str | Path, format: str = "onnx", out: str | Path | None = None, **options: Any
) -> Path:
    """Export a run's policy (latest checkpoint) into folder `out` (default RUN_DIR/export-FORMAT)
    and check it; returns `out`. `options` override the run's policy options (DT:
    `target_return`, `inference`)."""
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}; got {format!r}")
    run, folder = checkpoint_folder(Path(run_dir))
    out = Path(out) if out is not None else run / f"export-{format}"
    # the folder just chosen, not the latest again: a checkpoint written meanwhile by a running
    # training must not make policy.json name one checkpoint and hold another's weights
    step, chosen = build_step(folder, **options)  # before touching `out`: it may fail
    _prepare(out)
    model_file = MODEL_FILES[format]
    (write_onnx if format == "onnx" else write_torchscript)(step, out / model_file)
    rows = {f"state.{name}": row.numpy() for name, row in step.initial_row().items()}
    np.savez(out / INITIAL_STATE, **rows)
    written = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != POLICY_JSON)
    meta = _metadata(step, format, model_file, run, folder, chosen)
    meta["files"] = {name: sha256_file(out / name) for name in written}
    (out / POLICY_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    check_export(step, out)
    return out


def _prepare(out: Path) -> None:
    """An empty folder, or one holding a previous export (replaced); anything else is refused."""
    if out.exists():
        ours = {POLICY_JSON, INITIAL_STATE, *MODEL_FILES.values()}
        others = [p.name for p in out.iterdir() if p.name not in ours]
        if others or not out.is_dir():
            raise FileExistsError(
                f"{out} exists and holds files that are not an export ({', '.join(others[:3])}); "
                "pass an empty or new folder as --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _metadata(
    step: ExportStep,
    format: str,
    model_file: str,
    run: Path,
    folder: Path,
    options: dict[str, Any],
) -> dict[str, Any]:
    spec = step.spec
    action_space: dict[str, Any] = {"shape": list(spec.action_shape), "discrete": spec.discrete}
    if spec.discrete:
        action_space.update(dtype="int64", n=spec.action_dim)
    else:
        action_space.update(dtype="float32", low=spec.action_low, high=spec.action_high)
    names = step.state_names()
    noise = None
    if step.noise_shape is not None:
        noise = {"input": "noise", "shape": ["B", *step.noise_shape], "distribution": "N(0, 1)"}
    return {
        "format": FORMAT,
        "version": VERSION,
        "runtime": format,
        "model_file": model_file,
        "initial_state_file": INITIAL_STATE,
        "agent": str(load_config(run)["algo"]),
        "description": step.description,
        "policy_options": options,
        "source": {
            "run_dir": str(run.resolve()),
            "checkpoint": folder.name,
            "checkpoint_step": checkpoint_step(folder),
            "weights_sha256": sha256_file(folder / "model.safetensors"),
        },
        "observation_space": {"shape": list(spec.obs_shape), "dtype": "float32"},
        "action_space": action_space,
        "inputs": [s.to_dict() for s in step.input_specs()],
        "outputs": [s.to_dict() for s in step.output_specs()],
        "state": [{"input": f"state.{n}", "output": f"next_state.{n}"} for n in names],
        "noise": noise,
        "exported_with": {"seqrl": _version(), "torch": torch.__version__, "opset": OPSET},
    }


def check_export(step: ExportStep, out: Path, steps: int = CHECK_STEPS, num_envs: int = 3) -> None:
    """Drive the written export (through `seqrl.runtime`) and the eager step side by side on
    random observations, one env reset midway; a `ValueError` when they differ."""
    exported = ExportedPolicy(out, num_envs)
    generator = np.random.default_rng(0)
    state = {name: torch.from_numpy(rows.copy()) for name, rows in exported.state.items()}
    worst = 0.0
    for t in range(steps):
        if t == steps // 2:
            done = np.arange(num_envs) == 1
            exported.reset(done)
            for name, rows in state.items():
                rows[torch.from_numpy(done)] = torch.from_numpy(exported.initial[name])
        obs = generator.standard_normal((num_envs, *step.spec.obs_shape)).astype(np.float32)
        reward = generator.standard_normal(num_envs).astype(np.float32)
        noise = None
        extra: list[torch.Tensor] = []
        if step.noise_shape is not None:
            noise = generator.standard_normal((num_envs, *step.noise_shape)).astype(np.float32)
            extra = [torch.from_numpy(noise)]
        action = exported.act(obs, reward, noise)
        with torch.no_grad():
            outputs = step(torch.from_numpy(obs), torch.from_numpy(reward), *state.values(), *extra)
        state = dict(zip(state, outputs[1:], strict=True))
        worst = max(worst, _difference(action, outputs[0].numpy()))
        for name, value in state.items():
            worst = max(worst, _difference(exported.state[name], value.numpy()))
        if worst > CHECK_TOLERANCE:
            raise ValueError(
                f"{out / exported.meta['model_file']}: the exported graph differs from the "
                f"agent's step by {worst:.3g} at step {t} (tolerance {CHECK_TOLERANCE:g}); the "
                "step has Python control flow on tensor values that tracing froze"
            )


def _version() -> str:
    try:
        return importlib.metadata.version("seqrl")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.dtype == bool or b.dtype == bool:
        return float(np.any(a != b))
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
