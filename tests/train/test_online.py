"""The online loop: it calls only reset/act/update, bootstraps truncations from the final
observation, logs and checkpoints like the offline loop, resumes, and the run assembly works."""

from __future__ import annotations

import os
import signal
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from seqrl.agents.recurrent_ppo import RecurrentPPOAgent, RecurrentPPOConfig
from seqrl.checkpoint import latest_checkpoint, load_checkpoint, load_config
from seqrl.cli import main
from seqrl.core import EnvSpec, PolicyStep, RolloutSettings
from seqrl.train.logging import read_metrics
from seqrl.train.online import OnlineConfig, train_online
from seqrl.train.runs import resolve_config

COUNTER_ID = "seqrl-test/Counter-v0"
CHUNK_4 = RolloutSettings(chunk_len=4)


class CounterEnv(gym.Env):
    """obs = [episode number, step in episode]; terminates when action 1 is taken at step >= 2.
    With a TimeLimit of 5 it is truncated otherwise, so both kinds of ends occur."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0, 1e6, (2,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.episode, self.t = -1, 0

    def reset(self, *, seed: int | None = None, options: Any = None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return np.array([self.episode, 0], np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.array([self.episode, self.t], np.float32)
        return obs, 1.0, bool(action == 1 and self.t >= 2), False, {}


if COUNTER_ID not in gym.registry:
    gym.register(COUNTER_ID, entry_point=CounterEnv, max_episode_steps=5)


class SpyPolicy:
    """Env 0 never ends its episodes (truncated at 5), the others terminate at step 3; the
    memory is the step count since the last reset."""

    def __init__(self, num_envs: int, calls: list[str]) -> None:
        self.calls, self.count = calls, torch.zeros(num_envs)

    def reset(self, done=None) -> None:
        self.calls.append("policy.reset")
        if done is None:
            self.count[:] = 0
        else:
            self.count[torch.as_tensor(np.asarray(done))] = 0

    def act(self, obs, reward=None) -> PolicyStep:
        self.calls.append("policy.act")
        count = self.count.clone()
        self.count += 1
        action = (count.long() % 3 == 2).long()  # action 1 at every third step
        action[0] = 0
        return PolicyStep(action, {"value": count, "memory/count": count})


class SpyAgent:
    """Records every attribute the loop touches; keeps the rollouts it is given."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.rollouts: list[Any] = []

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name not in ("calls", "rollouts"):
            object.__getattribute__(self, "calls").append(f"agent.{name}")
        return object.__getattribute__(self, name)

    def update(self, rollout: Any) -> dict[str, float]:
        self.rollouts.append(rollout)
        return {"train/loss": 0.0}

    def policy(self, num_envs: int = 1, *, explore: bool = False, **options: Any) -> SpyPolicy:
        return SpyPolicy(num_envs, self.calls)

    def state_dict(self) -> dict[str, Any]:
        return {"model": {"w": torch.zeros(1)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _config(**overrides: Any) -> OnlineConfig:
    settings = {"steps": 3 * 12 * 2, "num_envs": 3, "rollout_steps": 12, "eval_every": 0}
    settings.update(checkpoint_every=0, eval_episodes=2, eval_num_envs=2)
    settings.update(overrides)
    return OnlineConfig(**settings)


def test_online_loop_calls_nothing_but_reset_act_and_update(tmp_path):
    agent = SpyAgent()
    train_online(agent, COUNTER_ID, tmp_path, _config(), rollout=CHUNK_4, progress=False)
    touched = set(agent.calls)
    # collection: reset/act; training: update; evaluation builds a policy; checkpoint: state
    assert touched == {
        "agent.policy",
        "policy.reset",
        "policy.act",
        "agent.update",
        "agent.state_dict",
    }
    assert agent.calls.count("agent.update") == 2
    assert agent.calls.count("agent.policy") == 2  # the collector and the final evaluation


def test_rollout_holds_policy_info_memory_at_chunk_starts_and_true_final_observations(tmp_path):
    agent = SpyAgent()
    train_online(agent, COUNTER_ID, tmp_path, _config(), rollout=CHUNK_4, progress=False)
    first, second = agent.rollouts
    for rollout in (first, second):
        assert rollout.terminated.any() and rollout.truncated.any()
        # value info == steps since reset == observation's step counter
        torch.testing.assert_close(rollout.info["value"], rollout.observations[..., 1])
        starts = rollout.chunk_first * rollout.num_envs + rollout.chunk_env
        obs_at_start = rollout.observations.reshape(-1, 2)[starts]
        torch.testing.assert_close(rollout.memory["count"], obs_at_start[:, 1])
        last = rollout.chunk_first + rollout.chunk_length - 1
        for c in range(rollout.num_chunks):
            t, env = int(last[c]), int(rollout.chunk_env[c])
            boot = rollout.bootstrap_observations[c]
            if rollout.truncated[t, env]:
                # the episode's own last observation (step 5), not the next episode's first
                assert boot[1] == 5 and boot[0] == rollout.observations[t, env, 0]
            elif rollout.terminated[t, env]:
                assert not rollout.bootstrap_mask[c]
    # the second rollout continues the first: episodes and memory carry over
    assert not second.episode_start[0].all()
    torch.testing.assert_close(second.memory["count"][: second.num_envs].float(),
                               second.observations[0, :, 1])  # fmt: skip


def test_loop_logs_episode_returns_steps_per_second_eval_and_checkpoints(tmp_path):
    agent = SpyAgent()
    config = _config(steps=3 * 12 * 4, checkpoint_every=72, keep_checkpoints=5)
    train_online(agent, COUNTER_ID, tmp_path, config, rollout=CHUNK_4, progress=False)
    records = read_metrics(tmp_path)
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == [36, 72, 108, 144]
    assert all("perf/steps_per_s" in r for r in train[1:])
    assert all(1 <= r["rollout/length_mean"] <= 5 for r in train)
    assert any("eval/return_mean" in r for r in records)
    steps = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert steps == ["step_00000072", "step_00000144"]


def test_sigint_during_update_checkpoints_the_finished_update_and_resume_continues(tmp_path):
    """Ctrl-C arrives while the agent updates: the update completes, the checkpoint holds its
    weights under its own step count, and resume carries on from there to the budget."""
    torch.manual_seed(0)
    spec = EnvSpec(obs_shape=(2,), action_dim=2, discrete=True)
    config = RecurrentPPOConfig(backbone="lstm", width=8, chunk_len=4, epochs=1)
    agent = RecurrentPPOAgent(config, spec)
    original = agent.update

    def update(rollout):
        if agent.updates == 1:  # during the second update
            os.kill(os.getpid(), signal.SIGINT)
        return original(rollout)

    agent.update = update  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        train_online(agent, COUNTER_ID, tmp_path, _config(steps=36 * 4), CHUNK_4, progress=False)
    folder = latest_checkpoint(tmp_path)
    assert folder.name == "step_00000072"  # two whole updates of 36 env steps
    agent_state, loop_state = load_checkpoint(folder)
    assert loop_state["step"] == 72 and agent_state["updates"] == 2
    for key, value in agent.model.state_dict().items():
        assert torch.equal(agent_state["model"][key], value), key
    resumed = RecurrentPPOAgent(config, spec)
    train_online(resumed, COUNTER_ID, tmp_path, _config(steps=36 * 4), CHUNK_4, resume=True,
                 progress=False)  # fmt: skip
    assert resumed.updates == 4 and resumed.env_steps == 144
    assert [r["step"] for r in read_metrics(tmp_path) if "train/loss" in r] == [36, 72, 108, 144]


def test_immediate_interrupt_inside_update_keeps_only_complete_checkpoints(tmp_path):
    """A KeyboardInterrupt raised inside `update` (a second Ctrl-C) writes nothing: the agent
    may be half-updated. The last scheduled checkpoint stays, and resume continues from it."""

    class Interrupting(SpyAgent):
        def update(self, rollout):
            if len(self.rollouts) == 2:
                raise KeyboardInterrupt
            return super().update(rollout)

    config = _config(steps=36 * 4, checkpoint_every=36)
    with pytest.raises(KeyboardInterrupt):
        train_online(Interrupting(), COUNTER_ID, tmp_path, config, CHUNK_4, progress=False)
    assert latest_checkpoint(tmp_path).name == "step_00000072"
    resumed = SpyAgent()
    train_online(resumed, COUNTER_ID, tmp_path, config, CHUNK_4, resume=True, progress=False)
    assert len(resumed.rollouts) == 2
    assert [r["step"] for r in read_metrics(tmp_path) if "train/loss" in r] == [36, 72, 108, 144]


def test_cli_trains_an_online_run_refuses_to_overwrite_it_and_resumes(tmp_path, capsys):
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        "env_id: seqrl/TMaze-v0\nenv_kwargs: {corridor_length: 3}\n"
        "agent: {width: 8, chunk_len: 4, memory: 4}\n"
        "train: {num_envs: 2, rollout_steps: 8, eval_episodes: 4, eval_num_envs: 2}\n"
    )
    run_dir = tmp_path / "run"
    args = ["train", "recurrent-ppo", "--config", str(preset), "--backbone", "gtrxl"]
    args += ["--steps", "32", "--run-dir", str(run_dir), "--seed", "3"]
    assert main(args) == 0
    config = load_config(run_dir)
    assert config["agent"]["backbone"] == "gtrxl" and config["seed"] == 3
    assert config["env_kwargs"] == {"corridor_length": 3}
    assert config["spec"]["discrete"] and config["train"]["steps"] == 32
    agent_state, loop_state = load_checkpoint(latest_checkpoint(run_dir))
    assert loop_state["step"] == 32 and "obs_mean" in agent_state["model"]
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    config_file = run_dir / "config.yaml"
    config_file.write_text(config_file.read_text().replace("steps: 32", "steps: 48"))
    assert main(["train", "recurrent-ppo", "--resume", str(run_dir)]) == 0
    assert latest_checkpoint(run_dir).name == "step_00000048"
    assert main(["eval", str(run_dir), "--episodes", "2", "--num-envs", "2"]) == 0
    assert "return" in capsys.readouterr().out


def test_resolve_config_rejects_typos_and_missing_env_for_online_agents():
    with pytest.raises(ValueError, match=r"did you mean agent\.chunk_len"):
        resolve_config("recurrent-ppo", None, None, ["agent.chunk_length=8"], "seqrl/TMaze-v0")
    with pytest.raises(ValueError, match="--env"):
        resolve_config("recurrent-ppo", None, None, [])
    with pytest.raises(ValueError, match="backbone"):
        resolve_config("recurrent-ppo", None, None, ["agent.backbone=gpt2"], "seqrl/TMaze-v0")
    with pytest.raises(ValueError, match=r"unknown setting policy\.target_return"):
        resolve_config("recurrent-ppo", None, None, ["policy.target_return=1"], "seqrl/TMaze-v0")


def test_a_budget_that_is_not_whole_rollouts_is_rounded_up_and_said_up_front(tmp_path, capsys):
    from seqrl.train.online import budget_line, exact_budget

    config = _config(steps=80)  # rollouts of 3 x 12 = 36 env steps
    assert exact_budget(config) == 108
    assert "trains 108 env steps (3 updates)" in budget_line(config)
    agent = SpyAgent()
    train_online(agent, COUNTER_ID, tmp_path, config, CHUNK_4, progress=False)
    assert agent.calls.count("agent.update") == 3
    assert latest_checkpoint(tmp_path).name == "step_00000108"
    assert "train.steps=80 is not a multiple" in capsys.readouterr().out
    assert exact_budget(_config(steps=72)) == 72


def test_a_run_trained_from_python_gets_a_config_so_eval_and_load_policy_accept_it(
    tmp_path, capsys
):
    from seqrl.export import load_policy

    torch.manual_seed(0)
    spec = EnvSpec(obs_shape=(2,), action_dim=2, discrete=True)
    agent = RecurrentPPOAgent(RecurrentPPOConfig(backbone="gru", width=8, chunk_len=4), spec)
    train_online(agent, COUNTER_ID, tmp_path, _config(steps=36), CHUNK_4, progress=False)
    config = load_config(tmp_path)
    assert config["algo"] == "recurrent-ppo" and config["env_id"] == COUNTER_ID
    assert config["agent"]["backbone"] == "gru" and config["train"]["steps"] == 36
    policy = load_policy(tmp_path)
    policy.reset()
    assert policy.act(np.zeros(2, np.float32)).shape == ()
    assert main(["eval", str(tmp_path), "--episodes", "2", "--num-envs", "2"]) == 0
    assert "step_00000036" in capsys.readouterr().out


@pytest.mark.parametrize("asynchronous", [False, True])
def test_train_asynchronous_steps_training_and_evaluation_envs_in_subprocesses(
    tmp_path, monkeypatch, asynchronous
):
    import importlib

    import seqrl.train.online
    from seqrl.envs.factory import make_vector_env

    made: list[tuple[str, bool]] = []

    def spy(where: str):
        def make(*args: Any, **kwargs: Any):
            envs = make_vector_env(*args, **kwargs)
            made.append((where, isinstance(envs, gym.vector.AsyncVectorEnv)))
            return envs

        return make

    monkeypatch.setattr(seqrl.train.online, "make_vector_env", spy("train"))
    # seqrl.envs exports a function named evaluate: reach the module itself
    evaluate_module = importlib.import_module("seqrl.envs.evaluate")
    monkeypatch.setattr(evaluate_module, "make_vector_env", spy("eval"))
    config = _config(steps=3 * 12, asynchronous=asynchronous)
    train_online(SpyAgent(), "CartPole-v1", tmp_path, config, rollout=CHUNK_4, progress=False)
    assert made == [("train", asynchronous), ("eval", asynchronous)]
