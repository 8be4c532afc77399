"""`load_policy` in a robot's process: no Gymnasium, h5py, numba, Minari or TensorBoard, and the
same actions as the in-process policy over a whole episode (longer than DT's context)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from seqrl.envs import make_env
from seqrl.export import load_policy
from seqrl.train.runs import resolve_config, train_run

BLOCKED = ("gymnasium", "h5py", "numba", "minari", "tensorboard", "tyro", "matplotlib")
EPISODE = 200  # Pendulum-v1 truncates at 200 steps

ROBOT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is not installed on this robot")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    import torch
    torch.set_num_threads(1)
    import seqrl
    from seqrl.export import load_policy

    out = {{}}
    for name, run in json.loads(sys.argv[1]).items():
        data = np.load(run + "/episode.npz")
        policy = seqrl.load_policy(run)
        policy.reset()
        actions = []
        for t in range(len(data["obs"])):
            reward = None if t == 0 else float(data["rewards"][t - 1])
            actions.append(policy.act(data["obs"][t], reward=reward))
        np.save(run + "/robot_actions.npy", np.stack(actions))
        out[name] = sorted(m for m in BLOCKED if m in sys.modules)
    print(json.dumps(out))
    """
)


def _dt_run(dataset: Path, run_dir: Path) -> Path:
    settings = ["agent.width=16", "agent.layers=2", "agent.heads=2", "agent.context_len=8"]
    settings += ["agent.batch_size=8", "agent.warmup_steps=2", "policy.target_return=-200"]
    settings += ["train.steps=6", "train.eval_every=0", "train.eval_episodes=1"]
    settings += ["train.eval_num_envs=1", "train.checkpoint_every=3"]
    train_run(run_dir, resolve_config("dt", str(dataset), None, settings), progress=False)
    return run_dir


def _ppo_run(run_dir: Path) -> Path:
    settings = ["agent.backbone=lstm", "agent.width=16", "agent.chunk_len=8", "train.steps=128"]
    settings += ["train.num_envs=2", "train.rollout_steps=32", "train.eval_every=0"]
    settings += ["train.eval_episodes=1", "train.eval_num_envs=1", "train.checkpoint_every=64"]
    config = resolve_config("recurrent-ppo", None, None, settings, env_id="Pendulum-v1")
    train_run(run_dir, config, progress=False)
    return run_dir


def _record_episode(run_dir: Path) -> np.ndarray:
    """Play one seeded episode with the in-process policy; save what it saw; return actions."""
    env = make_env("Pendulum-v1")
    policy = load_policy(run_dir)
    obs, _ = env.reset(seed=7)
    policy.reset()
    observations, rewards, actions = [], [], []
    reward = None
    for _ in range(EPISODE):
        action = policy.act(obs, reward=reward)
        observations.append(obs)
        actions.append(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    env.close()
    np.savez(run_dir / "episode.npz", obs=np.stack(observations), rewards=np.array(rewards))
    return np.stack(actions)


@pytest.mark.parametrize("blocked", [BLOCKED])
def test_load_policy_runs_without_training_dependencies_and_matches_in_process(
    pendulum_dataset, tmp_path, blocked
):
    runs = {"dt": _dt_run(pendulum_dataset, tmp_path / "dt"), "ppo": _ppo_run(tmp_path / "ppo")}
    expected = {name: _record_episode(run) for name, run in runs.items()}
    assert all(len(actions) == EPISODE for actions in expected.values())
    script = ROBOT.format(blocked=blocked)
    argument = json.dumps({name: str(run) for name, run in runs.items()})
    done = subprocess.run(
        [sys.executable, "-c", script, argument],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported == {"dt": [], "ppo": []}
    for name, run in runs.items():
        robot = np.load(run / "robot_actions.npy")
        assert robot.shape == expected[name].shape
        np.testing.assert_allclose(robot, expected[name], rtol=0, atol=1e-6, err_msg=name)
        assert np.ptp(robot) > 0, f"{name}: a constant policy would make this test vacuous"


def test_the_blocker_really_blocks():
    """The subprocess test can fail: importing a blocked module there is an ImportError."""
    script = ROBOT.split("import numpy as np")[0] + "import gymnasium\n"
    done = subprocess.run(
        [sys.executable, "-c", script.format(blocked=BLOCKED)], capture_output=True, text=True
    )
    assert done.returncode != 0 and "is not installed on this robot" in done.stderr
