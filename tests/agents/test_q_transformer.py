"""Q-Transformer: targets against a plain-Python reference, DQN equivalence in one dimension, the
optimal joint action of a toy MDP from random data, the regularizer, exact cached decoding, and
the command line (train, eval, resume, load_policy) with nothing but its registry entry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqrl.agents.q_transformer import (
    QTransformerAgent,
    QTransformerConfig,
    conservative_penalty,
    make_sampler,
    q_targets,
    q_transformer_loss,
)
from seqrl.buffers import EpisodeStore
from seqrl.checkpoint import latest_checkpoint, load_config
from seqrl.cli import main
from seqrl.core import EnvSpec
from seqrl.export import load_policy
from tests.buffers.helpers import random_episodes

BACKBONES = ["gpt", "gtrxl", "lstm", "gru", "xlstm", "mlp"]
BOX3 = EnvSpec(obs_shape=(4,), action_dim=3, action_low=(-1.0, -2.0, 0.0), action_high=(1, 2, 3))


def _agent(spec: EnvSpec, stats=None, **overrides) -> QTransformerAgent:
    torch.manual_seed(0)
    settings = {"width": 16, "layers": 2, "heads": 2, "history": 3, "bins": 6, "warmup_steps": 1}
    settings.update(overrides)
    return QTransformerAgent(QTransformerConfig(**settings), spec, stats)


def _store(spec: EnvSpec, seed: int = 0, lengths=(1, 2, 7, 9, 4, 12)) -> EpisodeStore:
    """Random episodes (every third truncated, the rest terminated) with actions in the Box."""
    rng = np.random.default_rng(seed)
    episodes = random_episodes(
        rng, list(lengths), obs_shape=spec.obs_shape, act_dim=spec.action_dim
    )
    low, high = np.array(spec.action_low), np.array(spec.action_high)
    for episode in episodes:
        episode["actions"] = (low + (episode["actions"] + 1) / 2 * (high - low)).astype(np.float32)
    return EpisodeStore.from_episodes(episodes)


def _train_a_little(agent: QTransformerAgent, store: EpisodeStore, updates: int = 3) -> None:
    """Non-trivial online and target weights (a large tau moves the target visibly)."""
    sampler = make_sampler(agent.config, store, 0)
    for _ in range(updates):
        agent.update(sampler.sample())


def _reference_targets(agent: QTransformerAgent, store: EpisodeStore, steps: np.ndarray):
    """Eq. 1 one transition at a time from the raw episodes, in plain Python (no batching)."""
    config, model, target = agent.config, agent.model, agent.target
    gamma, n, width = config.gamma, config.n_step, config.history
    low, span = float(model.reward_low), float(model.reward_span)

    def value(reward):  # one raw reward on the value scale
        return (1 - gamma) * (float(reward) - low) / span

    def window(traj, end):  # W observations ending at episode step `end` (L = final)
        observations = [*traj.observations, traj.final_observation]
        rows = [
            observations[j] if j >= 0 else np.zeros_like(observations[0])
            for j in range(end - width + 1, end + 1)
        ]
        mask = [j >= 0 for j in range(end - width + 1, end + 1)]
        return torch.as_tensor(np.stack(rows))[None], torch.tensor(mask)[None]

    out = []
    for step in steps:
        episode = int(store.episode_index[step])
        traj = store.episode(episode)
        t = int(step - store.episode_offsets[episode])
        length = len(traj)
        taken = min(n, length - t)
        bins = model.action_bins(torch.as_tensor(traj.actions[t])[None])[0].tolist()
        obs, mask = window(traj, t)
        row = []
        for i in range(model.dims - 1):  # within-timestep max over the next dimension
            q = target.q_values(obs, mask, torch.tensor([bins[: i + 1]]))[0, i + 1]
            row.append(float(q.max()))
        reward = sum(gamma**k * value(traj.rewards[t + k]) for k in range(taken))
        done = t + taken == length and bool(traj.terminations[-1])
        bootstrap = float(target.q_values(*window(traj, t + taken))[0, 0].max())
        row.append(reward + (0.0 if done else gamma**taken * bootstrap))
        if config.mc_return_clamp:
            mc = sum(gamma**k * value(traj.rewards[t + k]) for k in range(length - t))
            row = [max(x, mc) for x in row]
        out.append(row)
    return torch.tensor(out)


@pytest.mark.parametrize("clamp", [True, False], ids=["mc-clamp", "no-clamp"])
def test_targets_match_a_plain_python_reference(clamp):
    store = _store(BOX3)
    agent = _agent(BOX3, store.stats(), mc_return_clamp=clamp, n_step=3, tau=0.5, gamma=0.9)
    _train_a_little(agent, store)
    steps = np.arange(store.num_steps)
    batch = make_sampler(agent.config, store, 0).gather(steps)
    targets, floor = q_targets(agent.model, agent.target, batch)
    expected = _reference_targets(agent, store, steps)
    torch.testing.assert_close(targets, expected, rtol=1e-4, atol=1e-5)
    if clamp:  # the clamp binds somewhere and not everywhere, so both branches were checked
        bound = targets[:, -1] <= floor + 1e-7
        assert bound.any() and not bound.all()
    assert batch.dones.any() and (~batch.dones).any()


def test_one_dimensional_discrete_case_is_dqn():
    """Value scale made the identity (r_min = 0, r_max = 1 - gamma), no clamp, no regularizer:
    the targets and the loss are DQN's with an n-step target network."""
    spec = EnvSpec(obs_shape=(3,), action_dim=4, discrete=True)
    gamma = 0.9
    stats = {"reward_min": 0.0, "reward_max": 1 - gamma}
    agent = _agent(
        spec, stats, history=1, backbone="mlp", gamma=gamma, mc_return_clamp=False, tau=0.5
    )
    agent.config.conservative_weight = 0.0
    rng = np.random.default_rng(0)
    episodes = random_episodes(rng, [5, 8, 3, 6], obs_shape=(3,), act_dim=None, num_actions=4)
    store = EpisodeStore.from_episodes(episodes)
    _train_a_little(agent, store)
    batch = make_sampler(agent.config, store, 1).sample()

    def q_net(network, obs):  # a DQN's Q(s, .) (B, 4)
        return network.q_values(obs[:, None])[:, 0]

    with torch.no_grad():
        next_max = q_net(agent.target, batch.next_observations).max(-1).values
    dqn_target = batch.rewards + batch.discounts * (~batch.dones) * next_max
    targets, _ = q_targets(agent.model, agent.target, batch)
    torch.testing.assert_close(targets[:, 0], dqn_target, rtol=1e-5, atol=1e-6)
    q_taken = q_net(agent.model, batch.observations).gather(1, batch.actions[:, None])[:, 0]
    loss, _ = q_transformer_loss(agent.model, agent.target, batch)
    torch.testing.assert_close(loss, 0.5 * F.mse_loss(q_taken, dqn_target))


def _toy_episodes(rng: np.random.Generator, count: int, bins: int):
    """A 2-step MDP with 2 action dims: at s0 the joint action (0, bins-1) leads to s1, where
    (bins-1, 1) pays 1; every other s0 action leads to s2 (all pay 0.1), and (bins-1, 0) pays 0.2
    at s0 itself (the myopic choice). Optimal: (0, bins-1) at s0, (bins-1, 1) at s1."""
    eye = np.eye(4, dtype=np.float32)
    episodes = []
    for _ in range(count):
        first, second = rng.integers(0, bins, size=(2, 2))
        good = (first[0], first[1]) == (0, bins - 1)
        r0 = 0.2 if (first[0], first[1]) == (bins - 1, 0) else 0.0
        r1 = 1.0 if good and (second[0], second[1]) == (bins - 1, 1) else (0.0 if good else 0.1)
        centres = -1 + (2 * np.stack([first, second]) + 1) / bins  # bin centres (2, 2)
        episodes.append(
            {
                "observations": eye[[0, 1 if good else 2, 3]],
                "actions": centres.astype(np.float32),
                "rewards": np.array([r0, r1]),
                "terminations": np.array([False, True]),
                "truncations": np.array([False, False]),
            }
        )
    return episodes


def test_greedy_policy_recovers_the_optimal_joint_action_of_a_toy_mdp_from_random_data():
    """Without the regularizer: with uniformly random data every bin is in the data, and the
    paper's regularizer then halves each value per dimension (its fixed point p y / (p + alpha
    (1 - p) / (n - 1)) is y / 2 for p = 1 / n), so the myopic action would win here."""
    bins = 4
    spec = EnvSpec(obs_shape=(4,), action_dim=2, action_low=(-1.0, -1.0), action_high=(1.0, 1.0))
    store = EpisodeStore.from_episodes(_toy_episodes(np.random.default_rng(0), 2000, bins))
    settings = {"bins": bins, "history": 1, "width": 32, "layers": 1, "gamma": 0.9, "lr": 3e-3}
    settings.update(batch_size=128, n_step=1, tau=0.1, conservative_weight=0.0)
    agent = _agent(spec, store.stats(), **settings)
    _train_a_little(agent, store, updates=150)
    policy = agent.policy(2)
    policy.act(np.eye(4, dtype=np.float32)[[0, 1]])
    assert policy.last_bins[0].tolist() == [0, bins - 1]  # not the myopic (bins - 1, 0)
    assert policy.last_bins[1].tolist() == [bins - 1, 1]
    first = policy.last_q[0, 0]  # Q^1 at s0: the far-sighted first bin beats the myopic one
    assert first[0] > first[bins - 1] > 0


def test_regularizer_is_zero_when_every_bin_was_taken_and_pushes_only_untaken_bins():
    q = torch.randn(5, 3, 7, requires_grad=True)
    everything = torch.ones(5, 3, 7, dtype=torch.bool)
    penalty = conservative_penalty(q, everything)
    penalty.backward()
    assert float(penalty.detach()) == 0.0 and torch.equal(q.grad, torch.zeros_like(q))
    q.grad = None
    taken = F.one_hot(torch.randint(0, 7, (5, 3)), 7).bool()
    conservative_penalty(q, taken).backward()
    assert torch.equal(q.grad[taken], torch.zeros(15))
    untaken = q.grad[~taken]
    assert (untaken != 0).all()
    assert torch.equal(torch.sign(untaken), torch.sign(q.detach()[~taken]))  # descent -> toward 0


def test_regularizer_pulls_untaken_bins_to_zero_and_leaves_the_taken_ones_in_training():
    """A behaviour that always takes the same bins: with a strong regularizer the other bins go
    to 0 while the taken ones keep their TD value."""
    store = _store(BOX3, lengths=(20, 30, 25))
    store.actions[:] = np.array([0.5, -1.5, 2.0], np.float32)
    result = {}
    for weight in (0.0, 10.0):
        agent = _agent(BOX3, store.stats(), conservative_weight=weight, backbone="mlp", lr=3e-3)
        agent.model.q_bias.data.fill_(0.3)  # every bin starts well above 0
        agent.target.load_state_dict(agent.model.state_dict())
        sampler = make_sampler(agent.config, store, 0)
        for _ in range(60):
            metrics = agent.update(sampler.sample())
        result[weight] = metrics["train/q_taken"], metrics["train/q_untaken"]
    (taken, untaken), (taken_reg, untaken_reg) = result[0.0], result[10.0]
    assert untaken > 0.2 and abs(untaken_reg) < 0.1 * untaken, result
    assert abs(taken_reg - taken) < 0.2 * taken, result


@pytest.mark.parametrize("backbone", BACKBONES)
def test_cached_decoding_equals_recomputed_decoding(backbone):
    store = _store(BOX3)
    agent = _agent(BOX3, store.stats(), backbone=backbone, tau=0.5)
    _train_a_little(agent, store)
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(8, 3, 4)).astype(np.float32)
    for explore in (False, True):
        policies = [
            agent.policy(3, explore=explore, epsilon=0.5, decoding=d)
            for d in ("cache", "recompute")
        ]
        for t in range(8):  # windows fill, and env 1 restarts (padding again) at t = 4
            steps = []
            for policy in policies:
                if t == 4:
                    policy.reset(np.array([False, True, False]))
                torch.manual_seed(t)
                steps.append(policy.act(obs[t]).action)
            torch.testing.assert_close(steps[0], steps[1], rtol=0, atol=0)
            torch.testing.assert_close(policies[0].last_q, policies[1].last_q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backbone", ["gpt", "gtrxl", "lstm"])
def test_scoring_tokens_only_give_the_same_q_values_and_gradients(backbone, monkeypatch):
    """gpt and gtrxl run the last layer at the scoring tokens only: the same Q-values and
    gradients as computing every token and slicing (forced through `seqrl.nn.base.selects`)."""
    import seqrl.nn.base

    agent = _agent(BOX3, backbone=backbone, dropout=0.0)
    model = agent.model.train()
    rng = np.random.default_rng(2)
    window = torch.as_tensor(rng.normal(size=(5, 3, 4)), dtype=torch.float32)
    mask = torch.ones(5, 3, dtype=torch.bool)
    mask[1, 0] = mask[3, :2] = False  # windows at an episode's start are left-padded
    prefix = torch.as_tensor(rng.integers(0, 6, size=(5, 2)))
    outputs, grads = [], []
    for forced_slicing in (False, True):
        if forced_slicing:
            monkeypatch.setattr(seqrl.nn.base, "selects", lambda backbone: False)
        model.zero_grad()
        q = model.q_values(window, mask, prefix)  # (5, 3, bins)
        q.square().sum().backward()
        outputs.append(q.detach())
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_env_actions_round_trip_through_bins_within_half_a_bin():
    agent = _agent(BOX3, bins=10)
    low, high = torch.tensor(BOX3.action_low), torch.tensor(BOX3.action_high)
    actions = low + torch.rand(500, 3) * (high - low)  # (B, 3) env units
    bins = agent.model.action_bins(actions)
    back = agent.model.bins_to_actions(bins)
    assert ((back - actions).abs() <= (high - low) / 20 + 1e-5).all()
    assert torch.equal(agent.model.action_bins(back), bins)
    assert bins.min() == 0 and bins.max() == 9


def test_exploration_is_epsilon_greedy_per_dimension():
    agent = _agent(BOX3, bins=16)
    obs = np.zeros((200, 4), np.float32)
    greedy = agent.policy(200).act(obs).action
    assert torch.equal(greedy, agent.policy(200).act(obs).action)  # deterministic
    torch.manual_seed(0)
    random = agent.policy(200, explore=True, epsilon=1.0).act(obs).action
    assert (random != greedy).float().mean() > 0.8
    low, high = torch.tensor(BOX3.action_low), torch.tensor(BOX3.action_high)
    assert ((random >= low) & (random <= high)).all()
    assert torch.equal(agent.policy(200, explore=True, epsilon=0.0).act(obs).action, greedy)


def test_config_and_spec_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"agent\.gamma"):
        QTransformerConfig(gamma=1.0)
    with pytest.raises(ValueError, match=r"agent\.history"):
        QTransformerConfig(history=0)
    with pytest.raises(ValueError, match=r"policy\.decoding"):
        _agent(BOX3).policy(2, decoding="beam")
    unbounded = EnvSpec(obs_shape=(4,), action_dim=2, action_low=None, action_high=None)
    with pytest.raises(ValueError, match="unbounded"):
        _agent(unbounded)
    agent = _agent(BOX3, history=2)
    batch = make_sampler(QTransformerConfig(history=3), _store(BOX3), 0).sample()
    with pytest.raises(ValueError, match=r"agent\.history=2"):
        agent.update(batch)


def test_q_transformer_trains_evaluates_resumes_and_loads_from_the_command_line(
    pendulum_dataset, tmp_path, capsys
):
    run_dir = tmp_path / "qt"
    settings = ["agent.width=16", "agent.layers=1", "agent.history=2", "agent.bins=16"]
    settings += ["agent.batch_size=8", "train.log_every=2", "train.eval_every=0"]
    settings += ["train.eval_episodes=2", "train.eval_num_envs=2", "train.checkpoint_every=3"]
    args = ["train", "q-transformer", "--dataset", str(pendulum_dataset), "--steps", "4"]
    args += [x for item in settings for x in ("--set", item)]
    args += ["--backbone", "gru", "--run-dir", str(run_dir)]
    assert main(args) == 0
    config = load_config(run_dir)
    assert config["algo"] == "q-transformer" and config["agent"]["backbone"] == "gru"
    assert config["policy"] == {"epsilon": 0.1, "decoding": "cache"}
    evaluation = ["eval", str(run_dir), "--episodes", "2", "--num-envs", "2"]
    assert main([*evaluation, "--policy", "decoding=recompute"]) == 0
    assert "| 2 |" in capsys.readouterr().out
    config_file = run_dir / "config.yaml"
    config_file.write_text(config_file.read_text().replace("steps: 4", "steps: 6"))
    assert main(["train", "q-transformer", "--resume", str(run_dir)]) == 0
    assert latest_checkpoint(run_dir).name == "step_00000006"
    policy = load_policy(run_dir)
    policy.reset()
    action = policy.act(np.zeros(3, np.float32))
    assert action.shape == (1,) and abs(float(action[0])) <= 2.0
