"""Recurrent PPO: bootstrapping, the loss, action heads, normalization, and a short training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqrl.agents.examples import example_rollout as collect_synthetic_rollout
from seqrl.agents.recurrent_ppo import RecurrentPPO, RecurrentPPOConfig
from seqrl.buffers.rollout import compute_gae
from seqrl.core import EnvSpec, RolloutSettings
from seqrl.envs import evaluate
from seqrl.train.online import OnlineConfig, train_online
from tests.buffers.test_rollout import CONTINUOUS, DISCRETE


def _agent(backbone: str = "lstm", spec: EnvSpec = DISCRETE, **overrides) -> RecurrentPPO:
    torch.manual_seed(0)
    settings = {"width": 16, "layers": 1, "memory": 6, "chunk_len": 4, **overrides}
    return RecurrentPPO(RecurrentPPOConfig(backbone=backbone, **settings), spec)


@pytest.mark.parametrize("backbone", ["gtrxl", "lstm"])
def test_bootstrap_value_equals_stepping_the_policy_memory_on_the_final_observation(backbone):
    agent = _agent(backbone)
    record: list = []
    rollout = collect_synthetic_rollout(agent, num_envs=3, steps=15, chunk_len=4, record=record)
    boot = agent.bootstrap_values(rollout)  # (R, N)
    model = agent.model.eval()
    checked = 0
    for t, (_, _, final, truncated, state_after) in enumerate(record):
        # state_after: the memory after acting at step t, before the reset
        ends = np.flatnonzero(truncated)
        if t == len(record) - 1:
            done = (rollout.terminated[t] | rollout.truncated[t]).numpy()
            ends = np.union1d(ends, np.flatnonzero(~done))
        for env in ends:
            obs = final[env] if truncated[env] else rollout_next_obs(rollout, record, env)
            row = {k: v[env : env + 1] for k, v in state_after.items()}
            with torch.no_grad():
                _, value, _ = model.step(torch.as_tensor(obs)[None], row)
            torch.testing.assert_close(boot[t, env], value[0], rtol=1e-4, atol=1e-5)
            checked += 1
    assert checked >= 4
    assert (boot[rollout.terminated] == 0).all()


def rollout_next_obs(rollout, record, env):
    """The observation after the last step: stored as the bootstrap observation of the chunk."""
    last = rollout.chunk_first + rollout.chunk_length - 1
    chunk = int(torch.nonzero((last == rollout.num_steps - 1) & (rollout.chunk_env == env))[0])
    return rollout.bootstrap_observations[chunk].numpy()


def test_advantages_use_recorded_values_and_bootstraps():
    agent = _agent("gru")
    rollout = collect_synthetic_rollout(agent, num_envs=2, steps=10)
    advantages, returns = agent.advantages(rollout)
    ref_adv, ref_ret = compute_gae(
        rollout.rewards.numpy().astype(np.float32),
        rollout.info["value"].numpy(),
        rollout.terminated.numpy(),
        rollout.truncated.numpy(),
        agent.bootstrap_values(rollout).numpy(),
        agent.config.gamma,
        agent.config.gae_lambda,
    )
    torch.testing.assert_close(advantages, torch.from_numpy(ref_adv))
    torch.testing.assert_close(returns, torch.from_numpy(ref_ret))


@pytest.mark.parametrize("backbone", ["gtrxl", "lstm", "gru", "xlstm", "mlp"])
@pytest.mark.parametrize("spec", [DISCRETE, CONTINUOUS], ids=["discrete", "box"])
def test_update_gives_finite_namespaced_metrics_and_moves_the_weights(backbone, spec):
    agent = _agent(backbone, spec, layers=2)
    before = {k: v.clone() for k, v in agent.model.state_dict().items()}
    metrics = agent.update(collect_synthetic_rollout(agent, steps=8))
    assert all(k.count("/") == 1 for k in metrics)
    assert all(math.isfinite(v) for k, v in metrics.items() if k != "train/explained_variance")
    for name, param in agent.model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
    changed = [k for k, v in agent.model.state_dict().items() if not torch.equal(v, before[k])]
    assert "policy_head.weight" in changed and "obs_mean" in changed


def test_first_epoch_starts_on_policy_ratio_one_and_no_clipping():
    agent = _agent("lstm", epochs=1, minibatches=1, lr=1e-12)
    metrics = agent.update(collect_synthetic_rollout(agent, steps=12))
    assert metrics["train/approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["train/clip_fraction"] == 0.0


def test_value_clipping_takes_the_larger_of_clipped_and_unclipped_errors_in_target_std_units():
    agent = _agent("mlp", value_clip=0.1, ent_coef=0.0, vf_coef=1.0)
    agent.model.update_return_stats(torch.tensor([-1.0, 3.0]))  # mean 1, std 2
    rollout = collect_synthetic_rollout(agent, steps=6)
    mask = rollout.chunk_mask.float()
    with torch.no_grad():
        _, value = agent.model(rollout.chunked(rollout.observations), {})
    old = value + 1.0  # far from the current prediction: the clipped branch dominates
    target = torch.zeros_like(value)
    batch = {
        "obs": rollout.chunked(rollout.observations),
        "action": rollout.chunked(rollout.actions),
        "log_prob": rollout.chunked(rollout.info["log_prob"]),
        "value": old,
        "advantage": torch.zeros_like(value),
        "return": target,
        "mask": mask,
    }
    _, metrics = agent.loss(batch, {})
    clipped = old - 0.1 * 2.0
    error = torch.max(value**2, clipped**2) / 2.0**2
    expected = 0.5 * (error * mask).sum() / mask.sum()
    assert metrics["train/value_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_value_head_predicts_in_units_of_the_running_return_statistics():
    agent = _agent("gru")
    obs = torch.randn(3, 5, 3)
    with torch.no_grad():
        _, before = agent.model(obs, None)
        agent.model.update_return_stats(torch.tensor([10.0, 30.0]))  # mean 20, std 10
        _, after = agent.model(obs, None)
    torch.testing.assert_close(after, before * 10.0 + 20.0, rtol=1e-5, atol=1e-4)


def test_continuous_actions_stay_in_the_box_and_log_prob_refers_to_the_raw_sample():
    agent = _agent("lstm", CONTINUOUS, init_log_std=1.0)
    policy = agent.policy(num_envs=64, explore=True)
    step = policy.act(np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32))
    high = torch.tensor(CONTINUOUS.action_high)
    assert (step.action.abs() <= high + 1e-6).all()
    assert (step.info["raw_action"].abs() > 1).any(), "some samples fall outside [-1, 1]"
    dist = torch.distributions.Normal(0.0, math.e)  # mean ~0 from the 0.01-gain head
    approx = dist.log_prob(step.info["raw_action"]).sum(-1)
    torch.testing.assert_close(step.info["log_prob"], approx, rtol=0.05, atol=0.05)


def test_observation_statistics_match_numpy_over_several_updates():
    agent = _agent("mlp", epochs=1)
    seen = []
    for seed in range(3):
        rollout = collect_synthetic_rollout(agent, steps=5, seed=seed)
        seen.append(rollout.observations.reshape(-1, 3).numpy())
        agent.update(rollout)
    data = np.concatenate(seen)
    np.testing.assert_allclose(agent.model.obs_mean.numpy(), data.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(agent.model.obs_var.numpy(), data.var(0), rtol=1e-4, atol=1e-5)


def test_state_dict_round_trip_gives_identical_next_update():
    agent = _agent("gtrxl")
    agent.update(collect_synthetic_rollout(agent, seed=1))
    clone = _agent("gtrxl")
    clone.load_state_dict(agent.state_dict())
    rollout = collect_synthetic_rollout(agent, seed=2)
    torch.manual_seed(3)
    first = agent.update(rollout)
    torch.manual_seed(3)
    assert clone.update(rollout) == first


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="gtrxl, lstm, gru, xlstm, mlp"):
        RecurrentPPOConfig(backbone="transformer")


def test_policy_reset_clears_only_done_envs():
    agent = _agent("lstm")
    obs = np.random.default_rng(0).normal(size=(6, 3, 3)).astype(np.float32)
    policy, fresh = agent.policy(num_envs=3), agent.policy(num_envs=3)
    for t in range(3):
        policy.act(obs[t])
    before = {k: v.clone() for k, v in policy.state.items()}
    policy.reset(np.array([False, True, False]))
    for key, value in policy.state.items():
        assert (value[1] == 0).all()
        torch.testing.assert_close(value[[0, 2]], before[key][[0, 2]])
    got, expected = policy.act(obs[3]), fresh.act(obs[3])
    torch.testing.assert_close(got.info["value"][1], expected.info["value"][1])


def test_lstm_agent_learns_a_short_tmaze_through_the_online_loop(tmp_path):
    """End to end in a few seconds: corridor 4, where memory is required (memoryless: 50%)."""
    torch.manual_seed(0)
    agent = _agent("lstm", width=32, chunk_len=8, lr=2e-3, ent_coef=0.0)
    config = OnlineConfig(
        steps=16 * 32 * 30, num_envs=16, rollout_steps=32, eval_every=0, checkpoint_every=0
    )
    train_online(
        agent,
        "seqrl/TMaze-v0",
        tmp_path,
        config,
        rollout=RolloutSettings(chunk_len=8),
        env_kwargs={"corridor_length": 4},
        progress=False,
    )
    result = evaluate(agent.policy(num_envs=20), "seqrl/TMaze-v0", 100, 20, seed=123,
                      env_kwargs={"corridor_length": 4})  # fmt: skip
    assert result.mean >= 0.9
