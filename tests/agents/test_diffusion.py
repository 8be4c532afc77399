"""Diffusion Policy: the action queue, per-env resets, EMA weights, seeded noise, DDIM vs DDPM,
the reference's padded windows, the two-mode toy that BC averages, and the command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrl.agents.bc import BCAgent, BCConfig
from seqrl.agents.diffusion import ENTRY as DIFFUSION_ENTRY
from seqrl.agents.diffusion import (
    DiffusionAgent,
    DiffusionConfig,
    DiffusionModel,
    DiffusionPolicyOptions,
    DiffusionWindowSampler,
    diffusion_loss,
    ema_decay,
    export_step,
    make_sampler,
    noise_scheduler,
)
from seqrl.buffers import EpisodeStore
from seqrl.buffers.samplers import WindowSampler
from seqrl.checkpoint import latest_checkpoint, load_checkpoint, load_config
from seqrl.cli import main
from seqrl.core import EnvSpec
from seqrl.export import load_policy
from tests.agents.helpers import CONTINUOUS, observation_stream, random_window_batch

TINY = {**DIFFUSION_ENTRY.tiny_config, "train_timesteps": 20}  # 20: the error test names it
TO, TA = 2, 4


def _agent(updates: int = 3, spec: EnvSpec = CONTINUOUS, **overrides) -> DiffusionAgent:
    torch.manual_seed(0)
    agent = DiffusionAgent(DiffusionConfig(**{**TINY, **overrides}), spec)
    for seed in range(updates):  # non-trivial weights
        agent.update(random_window_batch(spec, context=agent.config.horizon, seed=seed))
    return agent


class SampleSpy:
    """Records every chunk the policy's model samples: (observation history, chunk)."""

    def __init__(self, policy) -> None:
        self.calls, self.sample = [], policy.model.sample
        policy.model.sample = self

    def __call__(self, observations, *args, **kwargs):
        chunk = self.sample(observations, *args, **kwargs)
        self.calls.append((observations.clone(), chunk.clone()))
        return chunk


def test_queue_executes_action_horizon_actions_then_replans():
    agent = _agent()
    policy = agent.policy(2, scheduler="ddim", inference_steps=4)
    spy = SampleSpy(policy)
    obs, _ = observation_stream(CONTINUOUS, 10, 2)
    actions = [policy.act(obs[t]).action for t in range(10)]
    assert len(spy.calls) == 3  # steps 0, 4, 8
    for call, start in zip(spy.calls, (0, 4, 8)):
        history, chunk = call
        expected = policy.model.to_env(chunk[:, TO - 1 : TO - 1 + TA])  # (N, Ta, A)
        for k in range(min(TA, 10 - start)):
            torch.testing.assert_close(actions[start + k], expected[:, k], rtol=0, atol=0)
        if start == 0:  # the first observation fills every history slot
            torch.testing.assert_close(history, torch.as_tensor(obs[0])[:, None].repeat(1, TO, 1))
        else:  # the last To observations, oldest first
            torch.testing.assert_close(
                history, torch.as_tensor(obs[start - 1 : start + 1]).transpose(0, 1)
            )


@pytest.mark.parametrize("executed", [1, 3])
def test_the_action_horizon_option_replans_that_often_in_the_policy_and_the_export(executed):
    agent = _agent()
    policy = agent.policy(2, scheduler="ddim", inference_steps=4, action_horizon=executed)
    spy = SampleSpy(policy)
    obs, _ = observation_stream(CONTINUOUS, 7, 2)
    actions = [policy.act(obs[t]).action for t in range(7)]
    starts = list(range(0, 7, executed))
    assert len(spy.calls) == len(starts)  # a chunk every `executed` steps, not every Ta = 4
    for (_, chunk), start in zip(spy.calls, starts):
        expected = policy.model.to_env(chunk[:, TO - 1 : TO - 1 + executed])
        for k in range(min(executed, 7 - start)):
            torch.testing.assert_close(actions[start + k], expected[:, k], rtol=0, atol=0)
    options = DiffusionPolicyOptions(scheduler="ddim", inference_steps=4, action_horizon=executed)
    step = export_step(agent, options)
    assert step.action_horizon == executed
    assert step.initial_row()["queue"].shape[0] == executed
    with pytest.raises(ValueError, match=r"policy\.action_horizon=8 exceeds horizon - obs_horizon"):
        agent.policy(1, action_horizon=8)


def test_standard_observation_normalization_is_the_z_score_and_range_the_min_max():
    rng = np.random.default_rng(0)
    obs = rng.normal(3.0, 2.0, size=(50, *CONTINUOUS.obs_shape)).astype(np.float32)
    stats = {
        "observation_mean": obs.mean(0),
        "observation_std": obs.std(0),
        "observation_min": obs.min(0),
        "observation_max": obs.max(0),
    }
    history = torch.as_tensor(obs[:4]).reshape(2, 2, -1)
    standard = DiffusionModel(
        DiffusionConfig(**TINY, obs_normalization="standard"), CONTINUOUS, stats
    )
    expected = (history - torch.as_tensor(stats["observation_mean"])) / torch.as_tensor(
        stats["observation_std"]
    )
    torch.testing.assert_close(standard.condition(history), expected, rtol=1e-5, atol=1e-5)
    ranged = DiffusionModel(DiffusionConfig(**TINY), CONTINUOUS, stats)
    low, high = torch.as_tensor(stats["observation_min"]), torch.as_tensor(stats["observation_max"])
    expected = 2 * (history - low) / (high - low) - 1
    torch.testing.assert_close(ranged.condition(history), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"agent\.obs_normalization"):
        DiffusionConfig(obs_normalization="whiten")


class _Passthrough(torch.nn.Module):
    def forward(self, noisy, steps, cond):
        return noisy


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
def test_the_loss_target_is_the_noise_or_the_clean_chunk(prediction, monkeypatch):
    """With noisy = clean and an identity denoiser, only sample prediction has zero loss."""
    agent = _agent(0, prediction_type=prediction)
    model, scheduler = agent.model, agent.noise_scheduler
    monkeypatch.setattr(scheduler, "add_noise", lambda clean, noise, steps: clean)
    monkeypatch.setattr(model, "denoiser", _Passthrough())
    loss, _ = diffusion_loss(model, scheduler, random_window_batch(CONTINUOUS, context=8))
    assert (loss.item() == 0.0) == (prediction == "sample")
    assert scheduler.config.prediction_type == prediction
    with pytest.raises(ValueError, match=r"agent\.prediction_type"):
        DiffusionConfig(prediction_type="v_prediction")


def test_reset_clears_history_and_queue_of_those_envs_only():
    agent = _agent()
    policy = agent.policy(3, scheduler="ddim", inference_steps=4)
    obs, _ = observation_stream(CONTINUOUS, 6, 3, seed=4)
    for t in range(2):
        policy.act(obs[t])
    policy.reset(np.array([False, True, False]))
    spy = SampleSpy(policy)
    policy.act(obs[2])
    assert policy.replanned.tolist() == [False, True, False]
    history, _ = spy.calls[0]
    assert history.shape[0] == 1  # only env 1 sampled a chunk
    torch.testing.assert_close(history[0], torch.as_tensor(obs[2, 1]).repeat(TO, 1))
    for t in range(3, 6):
        policy.act(obs[t])
    # env 1 now replans one step after the others: 0 and 2 at step 4, env 1 at step 6
    assert [c[0].shape[0] for c in spy.calls] == [1, 2]


def test_ema_follows_the_reference_decay_and_is_what_the_policy_uses():
    assert ema_decay(0, 0.75, 0.9999) == 0.0 and ema_decay(1, 0.75, 0.9999) == 0.0
    assert ema_decay(2, 0.75, 0.9999) == pytest.approx(1 - 2**-0.75)
    assert ema_decay(1001, 0.75, 0.9999) == pytest.approx(0.99438, abs=1e-5)
    assert ema_decay(10**7, 0.75, 0.9999) == 0.9999
    torch.manual_seed(0)
    agent = DiffusionAgent(DiffusionConfig(**{**TINY, "lr": 1e-2}), CONTINUOUS)
    expected = {k: v.clone() for k, v in agent.model.named_parameters()}
    for step in range(5):
        agent.update(random_window_batch(CONTINUOUS, context=8, seed=step))
        decay = ema_decay(step, 0.75, 0.9999)
        for name, param in agent.model.named_parameters():
            expected[name] = decay * expected[name] + (1 - decay) * param.detach()
    ema = dict(agent.ema_model.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(ema[name], value, msg=name)
    state = agent.state_dict()
    weights = "denoiser.final.1.weight"
    assert torch.equal(state["model"][weights], ema[weights])
    assert not torch.equal(state["train_model"][weights], ema[weights])
    assert agent.policy(1).model is agent.ema_model


def test_the_same_seed_gives_the_same_actions_and_explicit_noise_overrides_it():
    agent = _agent()
    obs, _ = observation_stream(CONTINUOUS, 6, 2, seed=3)

    def rollout(seed, scheduler="ddpm", noise=None):
        policy = agent.policy(2, scheduler=scheduler, inference_steps=5, seed=seed)
        return torch.stack([policy.act(obs[t], noise=noise).action for t in range(6)])

    torch.testing.assert_close(rollout(3), rollout(3), rtol=0, atol=0)
    assert not torch.allclose(rollout(3), rollout(4))
    noise = torch.randn(2, 8, 2)
    torch.testing.assert_close(rollout(3, "ddim", noise), rollout(4, "ddim", noise), rtol=0, atol=0)
    assert not torch.allclose(rollout(3, "ddim"), rollout(4, "ddim"))


@pytest.mark.parametrize("steps", [20, 5])
def test_ddim_with_eta_one_follows_ddpms_path_step_for_step(steps):
    """DDIM with eta = 1 (clipped x0 reused) is DDPM's posterior step: over the same timesteps
    and the same noise draws, the two samplers must give the same chunk."""
    agent = _agent()
    config, model = agent.config, agent.ema_model
    obs = torch.randn(3, TO, 5)
    start = torch.randn(3, 8, 2)
    ddpm = noise_scheduler(config, "ddpm", steps)
    ddim = noise_scheduler(config, "ddim", steps)
    assert ddpm.timesteps.tolist() == ddim.timesteps.tolist()
    gen = [torch.Generator().manual_seed(i) for i in range(3)]
    first = model.sample(obs, ddpm, start, gen)
    gen = [torch.Generator().manual_seed(i) for i in range(3)]
    second = model.sample(obs, ddim, start, gen, eta=1.0, use_clipped_model_output=True)
    torch.testing.assert_close(first, second, rtol=1e-4, atol=1e-5)
    deterministic = model.sample(obs, ddim, start)  # eta = 0: no noise after the start
    assert not torch.allclose(first, deterministic, atol=1e-3)


def test_every_sampler_recovers_the_data_from_an_oracle_denoiser():
    """With the true noise as the prediction, DDPM-T, DDIM-T and DDIM-4 all land on x0."""
    agent = _agent()
    model = agent.ema_model
    target = torch.rand(2, 8, 2) * 1.6 - 0.8  # (B, Tp, A) inside the clip range
    alphas = noise_scheduler(agent.config).alphas_cumprod

    def oracle(sample, t, cond):
        a = alphas[int(t)]
        return (sample - a.sqrt() * target) / (1 - a).sqrt()

    model.denoiser.forward = oracle
    obs = torch.zeros(2, TO, 5)
    for kind, steps in (("ddpm", None), ("ddim", None), ("ddim", 4)):
        scheduler = noise_scheduler(agent.config, kind, steps)
        got = model.sample(obs, scheduler, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(got, target, rtol=0, atol=1e-4, msg=f"{kind}-{steps}")


def _store(episodes: list[tuple[np.ndarray, np.ndarray]]) -> EpisodeStore:
    return EpisodeStore.from_episodes(
        [
            {
                "observations": np.concatenate([obs, obs[-1:]]),  # Minari: T + 1
                "actions": act,
                "rewards": np.ones(len(act), np.float32),
                "terminations": np.arange(len(act)) == len(act) - 1,
                "truncations": np.zeros(len(act), bool),
            }
            for obs, act in episodes
        ]
    )


def test_training_windows_are_padded_as_the_reference_sampler_pads_them():
    length = 10
    obs = np.arange(length, dtype=np.float32)[:, None].repeat(5, 1)  # (L, 5): obs value = step
    act = np.stack([np.arange(length), -np.arange(length)], 1).astype(np.float32) / 10
    sampler = DiffusionWindowSampler(_store([(obs, act)]), 8, TO, TA, batch_size=64, seed=0)
    # windows start from -(To - 1) to L - Tp + Ta - 1
    assert sampler.window_starts.tolist() == list(range(-1, length - 8 + TA))
    batch = sampler.sample()
    for row in range(batch.batch_size):
        steps = batch.timesteps[row]
        start = int(steps[0]) if batch.mask[row, 0] else -1
        wanted = torch.arange(start, start + 8)
        torch.testing.assert_close(steps, wanted.clamp(0, length - 1))  # first/last repeated
        torch.testing.assert_close(batch.observations[row, :, 0], steps.float())
        assert torch.equal(batch.mask[row], (wanted >= 0) & (wanted < length))
    assert (~batch.mask[:, 0]).any() and (~batch.mask[:, -1]).any()
    with pytest.raises(ValueError, match=r"agent\.horizon=16"):
        DiffusionWindowSampler(_store([(obs[:4], act[:4])]), 16, TO, 1, batch_size=4)


def _two_mode_store(seed: int = 0) -> EpisodeStore:
    """Every observation is noise; each episode's actions are all +1 or all -1, half each."""
    rng = np.random.default_rng(seed)
    episodes = []
    for e in range(40):
        obs = rng.normal(size=(12, 3)).astype(np.float32)
        episodes.append((obs, np.full((12, 1), 1.0 if e % 2 else -1.0, np.float32)))
    return _store(episodes)


def test_diffusion_samples_both_modes_where_bcs_mse_head_averages_them():
    spec = EnvSpec(obs_shape=(3,), action_dim=1, action_low=(-1.0,), action_high=(1.0,))
    store = _two_mode_store()
    torch.manual_seed(0)
    config = DiffusionConfig(
        obs_horizon=1, horizon=4, action_horizon=2, down_dims=[32], groups=8,
        step_embed_dim=32, lr=2e-3, warmup_steps=10, batch_size=64,
    )  # fmt: skip
    agent = DiffusionAgent(config, spec, store.stats())
    sampler = make_sampler(config, store, seed=0)
    for _ in range(300):
        agent.update(sampler.sample())
    obs = torch.as_tensor(np.random.default_rng(1).normal(size=(200, 1, 3)), dtype=torch.float32)
    scheduler = noise_scheduler(config, "ddpm")
    chunks = agent.ema_model.sample(obs, scheduler, generator=torch.Generator().manual_seed(0))
    samples = chunks[:, 0, 0]  # (200,) first action of each chunk, env units = model units
    near_a_mode = ((samples.abs() - 1).abs() < 0.2).float().mean()
    assert near_a_mode >= 0.9, f"{near_a_mode:.2f} of samples within 0.2 of +-1"
    assert 0.25 < (samples > 0).float().mean() < 0.75  # both modes, not one

    bc = BCAgent(BCConfig(backbone="mlp", head="deterministic", context_len=1, width=32,
                          layers=2, lr=2e-3, warmup_steps=10, dropout=0.0), spec, store.stats())  # fmt: skip
    windows = WindowSampler(store, context_len=1, batch_size=64, seed=0)
    for _ in range(300):
        bc.update(windows.sample())
    bc.model.eval()
    prediction, _ = bc.model(obs, torch.zeros(200, 1, dtype=torch.long))
    assert prediction.abs().mean() < 0.3  # the MSE head predicts the average, near 0


def test_config_and_option_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"agent\.action_horizon=16 must be <= "):
        DiffusionConfig(horizon=16, obs_horizon=2, action_horizon=16)
    with pytest.raises(ValueError, match=r"agent\.denoiser"):
        DiffusionConfig(denoiser="mlp")
    with pytest.raises(ValueError, match=r"policy\.scheduler"):
        DiffusionPolicyOptions(scheduler="euler")
    with pytest.raises(
        ValueError, match=r"policy\.inference_steps=50 exceeds agent\.train_timesteps=20"
    ):
        _agent(0).policy(1, inference_steps=50)
    with pytest.raises(ValueError, match=r"horizon 6 must be divisible by 4.*agent\.horizon"):
        _agent(0, horizon=6, action_horizon=2, down_dims=[8, 16, 32]).update(
            random_window_batch(CONTINUOUS, context=6)
        )
    with pytest.raises(ValueError, match=r"agent\.horizon=8"):
        _agent(0).update(random_window_batch(CONTINUOUS, context=5))


def test_transformer_denoiser_trains_and_acts():
    agent = _agent(0, denoiser="transformer", width=16, layers=2, heads=2)
    before = {k: v.clone() for k, v in agent.model.named_parameters()}
    agent.update(random_window_batch(CONTINUOUS, context=8))
    for name, param in agent.model.named_parameters():
        assert param.grad is not None and not torch.equal(param, before[name]), name
    policy = agent.policy(2, scheduler="ddim", inference_steps=3)
    obs, _ = observation_stream(CONTINUOUS, 3, 2)
    assert all(policy.act(o).action.shape == (2, 2) for o in obs)


def test_diffusion_trains_evaluates_resumes_and_loads_from_the_command_line(
    pendulum_dataset, tmp_path, capsys
):
    run_dir = tmp_path / "diffusion"
    settings = ["agent.down_dims=[16,32]", "agent.groups=4", "agent.step_embed_dim=16"]
    settings += ["agent.horizon=4", "agent.action_horizon=2", "agent.batch_size=8"]
    settings += ["agent.train_timesteps=10", "agent.warmup_steps=1"]
    settings += ["train.log_every=2", "train.eval_every=0", "train.eval_episodes=2"]
    settings += ["train.eval_num_envs=2", "train.checkpoint_every=3"]
    settings += ["policy.scheduler=ddim", "policy.inference_steps=2"]  # fast evaluations
    args = ["train", "diffusion", "--dataset", str(pendulum_dataset)]
    args += [x for item in settings for x in ("--set", item)]
    assert main([*args, "--steps", "4", "--run-dir", str(run_dir)]) == 0
    config = load_config(run_dir)
    assert config["algo"] == "diffusion"
    assert config["policy"] == {
        "scheduler": "ddim",
        "inference_steps": 2,
        "seed": 0,
        "action_horizon": None,
    }
    evaluation = ["eval", str(run_dir), "--episodes", "2", "--num-envs", "2"]
    assert main([*evaluation, "--policy", "inference_steps=3"]) == 0
    assert "| 2 |" in capsys.readouterr().out
    config_file = run_dir / "config.yaml"
    config_file.write_text(config_file.read_text().replace("steps: 4", "steps: 6"))
    assert main(["train", "diffusion", "--resume", str(run_dir)]) == 0
    folder = latest_checkpoint(run_dir)
    assert folder.name == "step_00000006"
    state, _ = load_checkpoint(folder)
    # the checkpoint's inference weights are the EMA ones, and load_policy acts with them
    name = "denoiser.final.1.weight"
    assert not torch.equal(state["model"][name], state["train_model"][name])
    policy = load_policy(run_dir)
    torch.testing.assert_close(policy.policy.model.state_dict()[name], state["model"][name])
    policy.reset()
    action = policy.act(np.zeros(3, np.float32))
    assert action.shape == (1,) and abs(float(action[0])) <= 2.0
