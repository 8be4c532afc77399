"""The shared optimizer step: gradient norm, clipping, scheduler, stale gradients."""

from __future__ import annotations

import pytest
import torch

from seqrl.nn import optimizer_step


def test_optimizer_step_returns_the_norm_before_clipping_and_clips() -> None:
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([param], lr=1.0)
    loss = (param * torch.tensor([3.0, 4.0, 0.0])).sum()  # gradient (3, 4, 0), norm 5
    norm = optimizer_step(optimizer, loss, [param], max_grad_norm=1.0)
    assert norm == pytest.approx(5.0)
    torch.testing.assert_close(param.detach(), torch.tensor([-0.6, -0.8, 0.0]))


def test_optimizer_step_without_clipping_still_reports_the_norm() -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.5)
    norm = optimizer_step(optimizer, (param * torch.tensor([6.0, 8.0])).sum(), [param])
    assert norm == pytest.approx(10.0)
    torch.testing.assert_close(param.detach(), torch.tensor([-3.0, -4.0]))


def test_optimizer_step_discards_stale_gradients_and_steps_the_scheduler() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    param.grad = torch.full((1,), 100.0)  # left over from elsewhere
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    norm = optimizer_step(optimizer, param.sum(), (p for p in [param]), scheduler=scheduler)
    assert norm == pytest.approx(1.0)
    assert param.item() == pytest.approx(-1.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_warmup_adamw_ramps_the_learning_rate_and_restores_a_copy_of_its_state():
    import torch

    from seqrl.nn.optim import WarmupAdamW

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optim = WarmupAdamW(model.parameters(), lr=1e-2, weight_decay=0.0, warmup_steps=4,
                        max_grad_norm=0.5)  # fmt: skip
    rates = []
    for _ in range(6):
        loss = (model(torch.randn(8, 3)) ** 2).mean()
        _, lr = optim.step(loss)
        rates.append(lr)
    assert rates == pytest.approx([5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2, 1e-2])
    assert optim.updates == 6
    clone_model = torch.nn.Linear(3, 1)
    clone_model.load_state_dict(model.state_dict())
    clone = WarmupAdamW(clone_model.parameters(), 1e-2, 0.0, 4, 0.5)
    clone.load_state_dict(optim.state_dict())
    assert clone.updates == 6
    moments = [v.clone() for s in clone.optimizer.state.values() for v in s.values()]
    optim.step((model(torch.randn(8, 3)) ** 2).mean())  # must not move the clone's moments
    after = [v for s in clone.optimizer.state.values() for v in s.values()]
    assert all(torch.equal(a, b) for a, b in zip(moments, after))
    clone.load_state_dict({})  # weights-only state: nothing to restore, nothing changes
    assert clone.updates == 6
