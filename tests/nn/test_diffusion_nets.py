"""The diffusion denoisers: shapes, conditioning, causality of the GPT denoiser, size checks."""

from __future__ import annotations

import pytest
import torch

from seqrl.nn.diffusion import ConditionalUnet1D, SinusoidalStepEmbedding, TransformerDenoiser
from seqrl.nn.gpt import GPT

B, T, A, TO, C = 3, 8, 2, 2, 5


def _unet(**kw) -> ConditionalUnet1D:
    torch.manual_seed(0)
    settings = {"down_dims": (16, 32, 64), "groups": 4, "step_embed_dim": 16, **kw}
    return ConditionalUnet1D(A, TO * C, **settings)


def _transformer() -> TransformerDenoiser:
    torch.manual_seed(0)
    return TransformerDenoiser(A, C, T, TO, width=16, layers=2, heads=2, dropout=0.0)


@pytest.mark.parametrize("make", [_unet, _transformer], ids=["unet", "transformer"])
def test_denoiser_output_depends_on_sample_step_and_condition_with_a_gradient_everywhere(make):
    net = make()
    sample, cond = torch.randn(B, T, A), torch.randn(B, TO, C)
    steps = torch.tensor([0, 5, 9])
    out = net(sample, steps, cond)
    assert out.shape == (B, T, A)
    assert not torch.allclose(out, net(sample, steps + 1, cond))
    assert not torch.allclose(out, net(sample, steps, cond + 1))
    assert not torch.allclose(out, net(sample + 1, steps, cond))
    # a scalar step is broadcast over the batch
    torch.testing.assert_close(net(sample, 5, cond)[1], out[1])
    out.square().sum().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_unet_rows_are_independent_and_film_conditions_each_row():
    net = _unet().eval()
    sample, cond = torch.randn(B, T, A), torch.randn(B, TO, C)
    out = net(sample, 3, cond)
    changed = cond.clone()
    changed[1] += 1.0
    again = net(sample, 3, changed)
    torch.testing.assert_close(again[[0, 2]], out[[0, 2]])
    assert not torch.allclose(again[1], out[1])


def test_transformer_denoiser_is_causal_over_action_tokens_and_uses_seqrl_gpt():
    net = _transformer().eval()
    assert isinstance(net.gpt, GPT)
    sample, cond = torch.randn(B, T, A), torch.randn(B, TO, C)
    out = net(sample, 4, cond)
    later = sample.clone()
    later[:, 5:] += 1.0
    changed = net(sample=later, timestep=4, condition=cond)
    torch.testing.assert_close(changed[:, :5], out[:, :5])
    assert not torch.allclose(changed[:, 5:], out[:, 5:])


def test_step_embedding_and_size_errors_name_the_fix():
    emb = SinusoidalStepEmbedding(8)(torch.tensor([0, 1, 50]))
    assert emb.shape == (3, 8) and torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    with pytest.raises(ValueError, match="even"):
        SinusoidalStepEmbedding(7)
    with pytest.raises(ValueError, match=r"divisible by groups=4.*agent\.down_dims"):
        ConditionalUnet1D(A, C, down_dims=(16, 30), groups=4)
    with pytest.raises(ValueError, match=r"horizon 6 must be divisible by 4"):
        _unet()(torch.randn(1, 6, A), 0, torch.randn(1, TO, C))
