"""Recurrent behaviour cloning: exact per-step inference, the window mode, learning, and the
command line (train, eval, resume, load_policy) with nothing but its registry entry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrl.agents.bc import BCAgent, BCConfig
from seqrl.checkpoint import latest_checkpoint, load_config
from seqrl.cli import main
from seqrl.core import EnvSpec, WindowBatch
from seqrl.export import load_policy
from tests.agents.helpers import CONTINUOUS, DISCRETE, random_window_batch

BACKBONES = ["gpt", "gtrxl", "lstm", "gru", "xlstm", "mlp"]
STEPS, RESET_AT = 25, 10  # episodes longer than the context (6); env 1 restarts at step 10


def _agent(backbone: str, spec: EnvSpec = CONTINUOUS, **overrides) -> BCAgent:
    torch.manual_seed(0)
    settings = {"width": 16, "layers": 2, "heads": 2, "context_len": 6, "warmup_steps": 1}
    settings.update(overrides)
    agent = BCAgent(BCConfig(backbone=backbone, **settings), spec)
    for seed in range(3):  # non-trivial weights
        agent.update(random_window_batch(spec, context=6, seed=seed))
    agent.model.eval()
    return agent


def _rollout(agent: BCAgent, inference: str):
    """Act for STEPS steps over 3 envs, env 1 reset at RESET_AT; per step the predictions and
    each env's episode so far (observations, timesteps)."""
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(STEPS, 3, 5)).astype(np.float32)
    policy = agent.policy(3, inference=inference)
    policy.reset()
    starts = np.zeros(3, dtype=int)
    out = []
    for t in range(STEPS):
        if t == RESET_AT:
            policy.reset(np.array([False, True, False]))
            starts[1] = t
        policy.act(obs[t])
        out.append((policy.last_prediction.clone(), [obs[starts[e] : t + 1, e] for e in range(3)]))
    return out


@pytest.mark.parametrize("backbone", BACKBONES)
def test_step_inference_equals_the_parallel_forward_over_the_whole_episode(backbone):
    agent = _agent(backbone)
    for t, (prediction, episodes) in enumerate(_rollout(agent, "step")):
        for env, episode in enumerate(episodes):
            obs = torch.as_tensor(episode)[None]  # (1, T, 5)
            steps = torch.arange(len(episode))[None]
            expected, _ = agent.model(obs, steps)
            torch.testing.assert_close(
                prediction[env], expected[0, -1], rtol=1e-4, atol=1e-5, msg=f"t={t} env={env}"
            )


@pytest.mark.parametrize("inference", ["step", "chunk"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_step_inference_over_long_episodes_at_preset_size_with_midbatch_resets(backbone, inference):
    """The preset's model size (width 128, 3 layers, context 20), 320 steps over 3 envs, env 1
    restarting at step 150 and env 2 at 260 (chunk boundaries fall at different steps per env):
    every prediction equals the parallel forward over that env's episode so far (step mode) or
    over its current K-step chunk so far (chunk mode); one forward per episode segment or chunk,
    read at every position."""
    agent = _agent(backbone, width=128, layers=3, context_len=20)
    steps, restarts = 320, {150: 1, 260: 2}
    obs = np.random.default_rng(3).normal(size=(steps, 3, 5)).astype(np.float32)
    policy = agent.policy(3, inference=inference)
    policy.reset()
    predictions = []
    segments = [[0, None] for _ in range(3)]  # per env: [start, end) of its current episode
    finished = []  # (env, start, end)
    for t in range(steps):
        if t in restarts:
            env = restarts[t]
            finished.append((env, segments[env][0], t))
            segments[env][0] = t
            policy.reset(np.arange(3) == env)
        policy.act(obs[t])
        predictions.append(policy.last_prediction.clone())
    finished += [(env, start, steps) for env, (start, _) in enumerate(segments)]
    predicted = torch.stack(predictions)  # (T, 3, A)
    period = agent.config.context_len if inference == "chunk" else steps
    for env, start, end in finished:
        for first in range(start, end, period):  # episode steps first - start, ... (< end)
            last = min(first + period, end)
            segment = torch.as_tensor(obs[first:last, env])[None]  # (1, L, 5)
            expected, _ = agent.model(segment, torch.arange(first - start, last - start)[None])
            torch.testing.assert_close(
                predicted[first:last, env], expected[0], rtol=1e-4, atol=1e-4, msg=f"env {env}"
            )
    assert len(finished) == 5


@pytest.mark.parametrize("backbone", ["gpt", "lstm"])
def test_window_inference_recomputes_the_last_k_steps_from_a_fresh_state(backbone):
    agent = _agent(backbone)
    k = agent.config.context_len
    checked_long = False
    for prediction, episodes in _rollout(agent, "window"):
        for env, episode in enumerate(episodes):
            window = torch.as_tensor(episode[-k:])[None]  # (1, <=K, 5)
            first = max(len(episode) - k, 0)
            steps = torch.arange(first, len(episode))[None]
            expected, _ = agent.model(window, steps)
            torch.testing.assert_close(prediction[env], expected[0, -1], rtol=1e-4, atol=1e-5)
            checked_long |= len(episode) > k
    assert checked_long
    if backbone == "lstm":  # and it is a different function from step mode once T > K
        step_last = _rollout(agent, "step")[-1][0]
        window_last = _rollout(agent, "window")[-1][0]
        assert not torch.allclose(step_last, window_last, atol=1e-4)


@pytest.mark.parametrize("backbone", ["gpt", "gtrxl", "lstm", "xlstm"])
def test_chunk_inference_restarts_the_state_every_k_steps_of_each_episode(backbone):
    """Step t of an episode equals the parallel forward from a fresh state over its steps
    K*floor(t/K)..t (25 steps, K=6, env 1 restarting at step 10: chunks cut mid-rollout)."""
    agent = _agent(backbone)
    k = agent.config.context_len
    chunked = _rollout(agent, "chunk")
    checked_late = False
    for t, (prediction, episodes) in enumerate(chunked):
        for env, episode in enumerate(episodes):
            first = (len(episode) - 1) // k * k
            chunk = torch.as_tensor(episode[first:])[None]  # (1, <=K, 5)
            expected, _ = agent.model(chunk, torch.arange(first, len(episode))[None])
            torch.testing.assert_close(
                prediction[env], expected[0, -1], rtol=1e-4, atol=1e-5, msg=f"t={t} env={env}"
            )
            checked_late |= first >= 2 * k
    assert checked_late
    step_last = _rollout(agent, "step")[-1][0]  # and not step mode once an episode passes K
    assert not torch.allclose(chunked[-1][0], step_last, atol=1e-4)


def _cue_batch(seed: int, batch: int = 64, context: int = 8) -> WindowBatch:
    """Episodes whose first observation carries a cue (+-1 in feature 0) and whose action at
    every step is the cue's: only a policy with memory can act right after step 0."""
    gen = torch.Generator().manual_seed(seed)
    cue = torch.randint(0, 2, (batch,), generator=gen)  # (B,)
    obs = torch.randn(batch, context, 4, generator=gen) * 0.1
    obs[:, 0, 0] = cue.float() * 2 - 1
    return WindowBatch(
        observations=obs,
        actions=cue[:, None].repeat(1, context),
        rewards=torch.zeros(batch, context),
        returns_to_go=torch.zeros(batch, context),
        timesteps=torch.arange(context).repeat(batch, 1),
        mask=torch.ones(batch, context, dtype=torch.bool),
    )


def _late_accuracy(agent: BCAgent) -> float:
    batch = _cue_batch(999, batch=256)
    policy = agent.policy(256)
    correct = []
    for t in range(8):
        action = policy.act(batch.observations[:, t]).action
        if t >= 2:
            correct.append((action == batch.actions[:, t]).float().mean().item())
    return float(np.mean(correct))


def test_recurrent_bc_learns_to_remember_a_cue_that_a_memoryless_one_cannot():
    spec = EnvSpec(obs_shape=(4,), action_dim=2, discrete=True)
    accuracy = {}
    for backbone in ("lstm", "mlp"):
        torch.manual_seed(0)
        config = BCConfig(backbone=backbone, width=32, layers=1, context_len=8, dropout=0.0)
        config.lr, config.warmup_steps = 3e-3, 10
        agent = BCAgent(config, spec)
        for seed in range(150):
            metrics = agent.update(_cue_batch(seed))
        accuracy[backbone] = _late_accuracy(agent)
        assert np.isfinite(metrics["train/loss"])
    assert accuracy["lstm"] > 0.95, accuracy
    assert accuracy["mlp"] < 0.7, accuracy


@pytest.mark.parametrize("head", ["deterministic", "gaussian"])
def test_continuous_heads_fit_a_state_dependent_action_and_the_gaussian_std_shrinks(head):
    torch.manual_seed(0)
    weights = torch.randn(5, 2)

    def batch(seed):
        b = random_window_batch(CONTINUOUS, batch=32, context=4, seed=seed)
        b.actions = torch.tanh(b.observations @ weights) * torch.tensor(CONTINUOUS.action_high)
        return b

    config = BCConfig(backbone="mlp", head=head, width=32, layers=2, context_len=4, dropout=0.0)
    config.lr, config.warmup_steps = 3e-3, 10
    agent = BCAgent(config, CONTINUOUS)
    first = agent.update(batch(0))
    for seed in range(1, 300):
        last = agent.update(batch(seed))
    key = "train/mse" if head == "gaussian" else "train/loss"
    assert last[key] < 0.1 * first[key]
    if head == "gaussian":
        assert last["train/std_mean"] < 0.5 * first["train/std_mean"]
        explored = agent.policy(64, explore=True).act(np.zeros((64, 5), np.float32)).action
        assert explored.std(0).min() > 0  # sampling, inside the box
        assert (explored.abs() <= torch.tensor(CONTINUOUS.action_high)).all()


def test_config_and_options_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"agent\.head"):
        BCConfig(head="gmm")
    with pytest.raises(ValueError, match=r"policy\.inference"):
        _agent("gru", DISCRETE).policy(2, inference="cache")


def test_bc_trains_evaluates_resumes_and_loads_from_the_command_line(
    pendulum_dataset, tmp_path, capsys
):
    run_dir = tmp_path / "bc"
    settings = ["agent.width=16", "agent.layers=1", "agent.context_len=4", "agent.batch_size=8"]
    settings += ["train.log_every=2", "train.eval_every=0", "train.eval_episodes=2"]
    settings += ["train.eval_num_envs=2", "train.checkpoint_every=3"]
    args = ["train", "bc", "--dataset", str(pendulum_dataset), "--steps", "4"]
    args += [x for item in settings for x in ("--set", item)]
    args += ["--backbone", "gru", "--run-dir", str(run_dir)]
    assert main(args) == 0
    config = load_config(run_dir)
    assert config["algo"] == "bc" and config["agent"]["backbone"] == "gru"
    assert config["policy"] == {"inference": "step"}
    evaluation = ["eval", str(run_dir), "--episodes", "2", "--num-envs", "2"]
    assert main([*evaluation, "--policy", "inference=window"]) == 0
    assert "| 2 |" in capsys.readouterr().out
    config_file = run_dir / "config.yaml"
    config_file.write_text(config_file.read_text().replace("steps: 4", "steps: 6"))
    assert main(["train", "bc", "--resume", str(run_dir)]) == 0
    assert latest_checkpoint(run_dir).name == "step_00000006"
    policy = load_policy(run_dir)
    policy.reset()
    action = policy.act(np.zeros(3, np.float32))
    assert action.shape == (1,) and abs(float(action[0])) <= 2.0
