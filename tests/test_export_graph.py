"""`seqrl export`: every registered agent's policy as one ONNX / TorchScript step with explicit
state, equal to `load_policy` over full episodes with resets in the middle of a batch of 4 envs.

The parity tests iterate the registry, so an agent registered later is covered, or fails here
with the error naming what it lacks (`AgentEntry.export_step`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seqrl.agents import REGISTRY
from seqrl.agents.export_step import ExportStep
from seqrl.cli import main
from seqrl.core import EnvSpec
from seqrl.export_graph import FORMATS, check_export, export_policy, write_onnx
from seqrl.runtime import load_exported, sha256_file
from tests.export_helpers import EXPORT_OPTIONS, compare_rollouts, make_run

TOLERANCE = 1e-4


def _parity(tmp_path, name, kind, agent=None, steps=160, **options):
    options = {**EXPORT_OPTIONS.get(name, {}), **options}
    run = make_run(name, tmp_path, kind, agent)
    for format in FORMATS:
        out = export_policy(run, format, tmp_path / f"export-{format}", **options)
        worst, resets = compare_rollouts(run, load_exported(out, 4), kind, steps, **options)
        assert resets >= 3, "the episodes must end at different steps in the batch"
        assert worst <= TOLERANCE, f"{name} {format}: action difference {worst:.3g}"


def test_every_registered_agent_declares_an_export_step():
    lacking = [name for name, entry in REGISTRY.items() if entry.export_step is None]
    assert not lacking, (
        f"agents without AgentEntry.export_step: {lacking}; add an ExportStep to each agent file "
        "(seqrl/agents/export_step.py says how)"
    )


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_exported_actions_equal_load_policy_with_midbatch_resets(tmp_path, name):
    _parity(tmp_path, name, "continuous")


def test_exported_diffusion_replanning_every_third_step_equals_load_policy_over_320_steps(tmp_path):
    """The `action_horizon` policy option (not the agent's Ta) in the exported step, over long
    episodes with resets in the middle of the batch."""
    _parity(tmp_path, "diffusion", "continuous", steps=320, action_horizon=3)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_exported_discrete_actions_equal_load_policy(tmp_path, name):
    _parity(tmp_path, name, "discrete")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "agent", "options"),
    [
        ("dt", {"attention_window": 2, "context_len": 6}, {"inference": "cache"}),
        ("dt", {"backbone": "lstm"}, {}),
        ("recurrent-ppo", {"backbone": "gtrxl"}, {}),
        ("recurrent-ppo", {"backbone": "xlstm", "heads": 2}, {}),
        ("recurrent-ppo", {"backbone": "mlp"}, {}),
        ("bc", {"backbone": "gpt", "attention_window": 3, "heads": 2}, {}),
        ("bc", {"backbone": "gtrxl", "attention_window": 3}, {}),
        ("bc", {"backbone": "xlstm"}, {}),
        ("bc", {"backbone": "lstm", "head": "deterministic"}, {}),
        ("diffusion", {"denoiser": "transformer", "width": 16, "layers": 1, "heads": 2}, {}),
        ("diffusion", {"obs_horizon": 3, "action_horizon": 2}, {"inference_steps": 10}),
    ],
)
def test_exported_backbones_and_modes_equal_load_policy(tmp_path, name, agent, options):
    _parity(tmp_path, name, "continuous", agent, **options)


@pytest.fixture(scope="module")
def dt_run(tmp_path_factory):
    return make_run("dt", tmp_path_factory.mktemp("dt"), "continuous")


def test_policy_json_lists_every_input_output_state_pair_and_file(dt_run, tmp_path):
    out = export_policy(dt_run, "onnx", tmp_path / "out")
    meta = json.loads((out / "policy.json").read_text())
    inputs = [spec["name"] for spec in meta["inputs"]]
    outputs = [spec["name"] for spec in meta["outputs"]]
    assert inputs[:2] == ["obs", "reward"] and outputs[0] == "action"
    pairs = meta["state"]
    assert {"input": "state.returns_to_go", "output": "next_state.returns_to_go"} in pairs
    assert [p["input"] for p in pairs] == inputs[2:]
    assert [p["output"] for p in pairs] == outputs[1:]
    assert all(spec["shape"][0] == "B" and spec["meaning"] for spec in meta["inputs"])
    assert meta["agent"] == "dt" and meta["noise"] is None
    assert meta["source"]["checkpoint"].startswith("step_")
    written = sorted(p.name for p in out.iterdir() if p.name != "policy.json")
    assert sorted(meta["files"]) == written == ["initial_state.npz", "policy.onnx"]
    assert all(sha256_file(out / name) == digest for name, digest in meta["files"].items())
    with np.load(out / "initial_state.npz") as rows:
        assert sorted(rows.files) == sorted(inputs[2:])
        assert rows["state.returns_to_go"] == pytest.approx(3.6)  # target 3600 / scale 1000
        shapes = {spec["name"]: spec["shape"][1:] for spec in meta["inputs"]}
        assert all(list(rows[name].shape) == shapes[name] for name in rows.files)


def test_cli_export_writes_a_loadable_torchscript_policy(dt_run, tmp_path, capsys):
    out = tmp_path / "ts"
    assert main(["export", str(dt_run), "--format", "torchscript", "--out", str(out)]) == 0
    assert "exported to" in capsys.readouterr().out
    policy = load_exported(out)
    policy.reset()
    assert policy.act(np.zeros(3, np.float32)).shape == (1,)


def test_cli_export_rejects_unknown_policy_option_in_one_line(dt_run, tmp_path, capsys):
    code = main(["export", str(dt_run), "--out", str(tmp_path / "x"), "--policy", "speed=2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "speed" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_export_refuses_a_folder_with_other_files(dt_run, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        export_policy(dt_run, "onnx", tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_refuses_a_run_whose_weights_file_was_replaced(tmp_path):
    run = make_run("recurrent-ppo", tmp_path, "continuous")
    folder = next((run / "checkpoints").glob("step_*"))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match=r"model\.safetensors.*sha256"):
        export_policy(folder, "onnx", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("inference", ["window", "chunk"])
def test_bc_window_and_chunk_inference_are_refused_with_the_fix(tmp_path, inference):
    run = make_run("bc", tmp_path, "continuous")
    with pytest.raises(ValueError, match=f"inference=step .*not {inference} mode's"):
        export_policy(run, "onnx", tmp_path / "out", inference=inference)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory):
    return make_run("diffusion", tmp_path_factory.mktemp("diffusion"), "continuous")


def test_diffusion_export_refuses_ddpm_naming_the_fix(diffusion_run, tmp_path):
    with pytest.raises(ValueError, match="--policy scheduler=ddim --policy inference_steps=N"):
        export_policy(diffusion_run, "onnx", tmp_path / "out")  # the run's default: DDPM
    assert not (tmp_path / "out").exists()
    out = export_policy(diffusion_run, "onnx", tmp_path / "ddim", **EXPORT_OPTIONS["diffusion"])
    meta = json.loads((out / "policy.json").read_text())
    assert meta["noise"] == {"input": "noise", "shape": ["B", 8, 1], "distribution": "N(0, 1)"}
    assert [spec["name"] for spec in meta["inputs"]][-1] == "noise"
    assert [p["input"] for p in meta["state"]] == [
        "state.history", "state.started", "state.queue", "state.queue_pos"
    ]  # fmt: skip


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
@pytest.mark.parametrize("kind", ["continuous", "discrete"])
@pytest.mark.parametrize("steps", [3, 10])
def test_diffusion_step_chunk_equals_the_policys_ddim_chunk(kind, steps, prediction):
    """The unrolled DDIM update (constants from diffusers, tensor math in the step) gives the
    chunk `DiffusionModel.sample` gives with diffusers' DDIMScheduler, from the same noise."""
    from seqrl.agents.diffusion import (
        DiffusionAgent,
        DiffusionConfig,
        DiffusionPolicyOptions,
        noise_scheduler,
    )
    from seqrl.agents.diffusion import export_step as diffusion_export_step

    spec = EnvSpec((3,), 2, action_low=(-2.0, -1.0), action_high=(2.0, 1.0))
    if kind == "discrete":
        spec = EnvSpec((4,), 3, discrete=True)
    torch.manual_seed(0)
    config = DiffusionConfig(**REGISTRY["diffusion"].tiny_config, prediction_type=prediction)
    agent = DiffusionAgent(config, spec)
    for seed in range(2):
        agent.update(REGISTRY["diffusion"].example_batch(agent, seed))
    options = DiffusionPolicyOptions(scheduler="ddim", inference_steps=steps)
    step = diffusion_export_step(agent, options).eval()
    history = torch.randn(5, 2, *spec.obs_shape)
    noise = torch.randn(5, 8, spec.action_dim)
    scheduler = noise_scheduler(agent.config, "ddim", steps)
    with torch.no_grad():
        expected = agent.ema_model.sample(history, scheduler, noise)
        torch.testing.assert_close(step.chunk(history, noise), expected, rtol=0, atol=1e-6)
    assert step.timesteps.tolist() == scheduler.timesteps.tolist()


class _FrozenBranch(ExportStep):
    """A step with Python control flow on a tensor value: tracing freezes the branch taken."""

    def __init__(self) -> None:
        super().__init__(EnvSpec((2,), 1, action_low=(-1.0,), action_high=(1.0,)))
        self.scale = torch.nn.Parameter(torch.ones(()))

    def initial_row(self) -> dict[str, torch.Tensor]:
        return {"count": torch.zeros(())}

    def forward(self, obs, reward, count):
        if bool((count > 0).any()):  # false at trace time, true afterwards
            return obs[:, :1] * 0 - self.scale, count + 1
        return obs[:, :1] * self.scale, count + 1


def test_check_export_catches_a_graph_that_froze_python_control_flow(tmp_path):
    step = _FrozenBranch().eval()
    write_onnx(step, tmp_path / "policy.onnx")
    np.savez(tmp_path / "initial_state.npz", **{"state.count": np.zeros((), np.float32)})
    meta = {
        "format": "seqrl-exported-policy",
        "version": 1,
        "runtime": "onnx",
        "model_file": "policy.onnx",
        "initial_state_file": "initial_state.npz",
        "observation_space": {"shape": [2]},
        "inputs": [s.to_dict() for s in step.input_specs()],
        "outputs": [s.to_dict() for s in step.output_specs()],
        "state": [{"input": "state.count", "output": "next_state.count"}],
        "files": {n: sha256_file(tmp_path / n) for n in ("policy.onnx", "initial_state.npz")},
    }
    (tmp_path / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="differs from the agent's step"):
        check_export(step, tmp_path)
