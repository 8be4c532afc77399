"""Unbatched DT evaluation loops for the evaluation-throughput comparison in `bench_dt.py`.

- `sequential_episodes`: one env, one episode after another, and at every step the history is
  cut to the last K steps, left-padded to K and run through the model at batch size 1: the
  structure of the reference Decision Transformer evaluation (kzl/decision-transformer,
  `evaluate_episode_rtg` + `get_action`), which grows the history with `torch.cat` per step.
- `hf_model_from_seqrl`: a Hugging Face `transformers.DecisionTransformerModel` with the weights
  of a seqrl GPT DT copied in (GPT-2 `Conv1D` weights are the transposed `nn.Linear` ones; HF's
  GPT-2 adds a learned position embedding that seqrl's backbone does not have, so it is zeroed),
  and `hf_step_fn`, which calls it the way HF's model card and blog example do.

Both loops use the same episode seeds as `seqrl.envs.evaluate` (episode i: `reset(seed=seed+i)`)
so, for a deterministic policy, the returns must equal the batched window-mode returns.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from seqrl.agents.dt import DecisionTransformerModel

# step_fn(observations (1, T, obs), actions (1, T, A) model units, returns_to_go (1, T) scaled,
#         timesteps (1, T), mask (1, T) bool) -> prediction (A,) in model units
StepFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def seqrl_step_fn(model: DecisionTransformerModel) -> StepFn:
    """The seqrl model's parallel forward at batch size 1 (what window inference computes)."""

    def step(observations, actions, returns_to_go, timesteps, mask):
        return model(observations, actions, returns_to_go, timesteps, mask)[0, -1]

    return step


@torch.no_grad()
def sequential_episodes(
    model: DecisionTransformerModel,
    step_fn: StepFn,
    env_id: str,
    episodes: int,
    seed: int,
    target_return: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of `episodes` episodes run one by one, recomputing the window."""
    model.eval()
    config, spec = model.config, model.spec
    k, scale = config.context_len, config.return_scale
    obs_dim, act_dim = model.obs_dim, spec.action_dim
    env = gym.make(env_id)
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            states = torch.as_tensor(obs, dtype=torch.float32).reshape(1, obs_dim)  # (t, obs)
            actions = torch.zeros(0, act_dim)  # (t, A)
            returns_to_go = torch.tensor([[target_return / scale]])  # (1, t)
            timesteps = torch.zeros(1, 1, dtype=torch.long)  # (1, t)
            done, total, t = False, 0.0, 0
            while not done:
                actions = torch.cat([actions, torch.zeros(1, act_dim)])
                window = states[-k:], actions[-k:], returns_to_go[0, -k:], timesteps[0, -k:]
                real = window[0].shape[0]
                pad = k - real
                mask = torch.cat(
                    [torch.zeros(pad, dtype=torch.bool), torch.ones(real, dtype=torch.bool)]
                )
                padded = [
                    torch.cat([torch.zeros(pad, *x.shape[1:], dtype=x.dtype), x])[None]
                    for x in window
                ]  # each (1, K, ...)
                prediction = step_fn(padded[0], padded[1], padded[2], padded[3], mask[None])
                actions[-1] = prediction
                env_action = model.to_env_action(prediction[None])[0].numpy()
                obs, reward, terminated, truncated, _ = env.step(env_action)
                done = bool(terminated or truncated)
                total += float(reward)
                t += 1
                states = torch.cat([states, torch.as_tensor(obs, dtype=torch.float32)[None]])
                next_rtg = returns_to_go[0, -1] - float(reward) / scale
                returns_to_go = torch.cat([returns_to_go, next_rtg.reshape(1, 1)], dim=1)
                step = min(t, config.max_timestep - 1)
                timesteps = torch.cat([timesteps, torch.full((1, 1), step)], dim=1)
            returns[episode], lengths[episode] = total, t
    finally:
        env.close()
    return returns, lengths


# ---- Hugging Face ------------------------------------------------------------------------------


def hf_available() -> bool:
    try:
        from transformers import DecisionTransformerModel  # noqa: F401
    except Exception:
        return False
    return True


@torch.no_grad()
def hf_model_from_seqrl(model: DecisionTransformerModel):
    """A `transformers.DecisionTransformerModel` computing the same function as a seqrl GPT DT."""
    from transformers import DecisionTransformerConfig
    from transformers import DecisionTransformerModel as HFDecisionTransformer

    config, spec = model.config, model.spec
    if config.backbone != "gpt" or config.attention_window is not None:
        raise ValueError("only a full-attention GPT DT maps onto Hugging Face's model")
    hf_config = DecisionTransformerConfig(
        state_dim=model.obs_dim,
        act_dim=spec.action_dim,
        hidden_size=config.width,
        max_ep_len=config.max_timestep,
        n_layer=config.layers,
        n_head=config.heads,
        n_inner=4 * config.width,
        n_positions=3 * config.context_len,
        activation_function=config.activation,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        action_tanh=True,
        bos_token_id=None,
        eos_token_id=None,
    )
    hf = HFDecisionTransformer(hf_config).eval()
    for name in ("embed_timestep", "embed_return", "embed_state", "embed_action", "embed_ln"):
        getattr(hf, name).load_state_dict(getattr(model, name).state_dict())
    hf.predict_action[0].load_state_dict(model.action_head.state_dict())
    encoder, backbone = hf.encoder, model.backbone
    encoder.wpe.weight.zero_()  # seqrl's backbone has no position embedding (timesteps do it)
    encoder.ln_f.load_state_dict(backbone.ln_final.state_dict())
    for hf_block, block in zip(encoder.h, backbone.blocks):
        hf_block.ln_1.load_state_dict(block.ln_attn.state_dict())
        hf_block.ln_2.load_state_dict(block.ln_mlp.state_dict())
        for conv, linear in (
            (hf_block.attn.c_attn, block.qkv),
            (hf_block.attn.c_proj, block.proj),
            (hf_block.mlp.c_fc, block.mlp_in),
            (hf_block.mlp.c_proj, block.mlp_out),
        ):
            conv.weight.copy_(linear.weight.T)  # Conv1D weight is (in, out)
            conv.bias.copy_(linear.bias)
    return hf


def hf_step_fn(model: DecisionTransformerModel, hf) -> StepFn:
    """HF's forward on one left-padded window; normalization as seqrl's model does it inside."""
    mean, std = model.obs_mean, model.obs_std

    def step(observations, actions, returns_to_go, timesteps, mask):
        states = (observations - mean) / std
        _, action_preds, _ = hf(
            states=states,
            actions=actions,
            returns_to_go=returns_to_go[..., None],
            timesteps=timesteps.clamp(max=model.config.max_timestep - 1),
            attention_mask=mask.long(),
            return_dict=False,
        )
        return action_preds[0, -1]

    return step


@torch.no_grad()
def max_abs_difference(model: DecisionTransformerModel, step_a: StepFn, step_b: StepFn) -> float:
    """Largest |a - b| over a few random left-padded windows (parity check of the weight copy)."""
    generator = torch.Generator().manual_seed(0)
    k, worst = model.config.context_len, 0.0
    for real in (1, k // 2, k):
        obs = torch.randn(1, k, model.obs_dim, generator=generator) * model.obs_std + model.obs_mean
        act = torch.rand(1, k, model.spec.action_dim, generator=generator) * 2 - 1
        rtg = torch.rand(1, k, generator=generator) * 3
        ts = torch.arange(k)[None] + 100
        mask = (torch.arange(k) >= k - real)[None]
        worst = max(
            worst,
            float((step_a(obs, act, rtg, ts, mask) - step_b(obs, act, rtg, ts, mask)).abs().max()),
        )
    return worst
