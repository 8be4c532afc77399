"""GTrXL specifics: memory span, gates at initialisation, memory across training segments."""

from __future__ import annotations

import pytest
import torch

from seqrl.nn import GTrXL, GTrXLConfig
from seqrl.nn.gtrxl import GRUGate


@torch.no_grad()
@pytest.mark.parametrize("path", ["forward", "step"])
def test_gtrxl_token_sees_itself_and_exactly_m_previous_tokens(path: str) -> None:
    torch.manual_seed(0)
    memory, length, t = 3, 10, 8
    model = GTrXL(GTrXLConfig(width=16, layers=1, heads=2, memory=memory)).eval()
    x = torch.randn(1, length, 16)

    def output_at_t(inputs: torch.Tensor) -> torch.Tensor:
        if path == "forward":
            return model(inputs)[0][0, t]
        state = model.initial_state(1)
        for i in range(t + 1):
            y, state = model.step(inputs[:, i : i + 1], state)
        return y[0, 0]

    base = output_at_t(x)
    for offset, visible in ((memory, True), (memory + 1, False)):
        changed = x.clone()
        changed[0, t - offset] += torch.randn(16)
        moved = (output_at_t(changed) - base).abs().max()
        assert (moved > 1e-5) == visible, f"token t-{offset} visible={visible}, moved {moved}"


def test_gru_gate_starts_close_to_the_identity() -> None:
    torch.manual_seed(0)
    gate = GRUGate(32, gate_bias=2.0)
    x, y = torch.randn(256, 32), torch.randn(256, 32)
    out = gate(x, y)
    assert (out - x).norm() < 0.5 * (out - y).norm()
    assert torch.allclose(gate.gate_bias, torch.full((32,), 2.0))
    # With no gate bias the same gate mixes in far more of y: the bias is what makes it near-identity.
    open_gate = GRUGate(32, gate_bias=0.0)
    open_gate.load_state_dict({**gate.state_dict(), "gate_bias": torch.zeros(32)})
    assert (out - x).norm() < 0.7 * (open_gate(x, y) - x).norm()


def test_gtrxl_memory_carries_context_but_not_gradients_across_segments() -> None:
    torch.manual_seed(0)
    model = GTrXL(GTrXLConfig(width=16, layers=2, heads=2, memory=4)).train()
    first = torch.randn(2, 6, 16, requires_grad=True)
    second = torch.randn(2, 6, 16)
    _, state = model(first)
    assert all(not t.requires_grad for t in state.values())
    y, _ = model(second, state)
    y.square().sum().backward()
    assert first.grad is None  # the memory is a stop-gradient
    with torch.no_grad():  # ... yet the first segment shapes the second one's outputs
        _, other_state = model(torch.randn(2, 6, 16))
        y_other, _ = model(second, other_state)
    assert (y_other[:, 0] - y[:, 0]).abs().max() > 1e-4
    assert state["length"].tolist() == [4, 4]
    # Even a memory handed in with autograd history is a stop-gradient (StopGrad(M) in the paper).
    learned = {
        key: t.float().requires_grad_() if key != "length" else t for key, t in state.items()
    }
    model(second, learned)[0].square().sum().backward()
    assert all(t.grad is None for key, t in learned.items() if key != "length")


def test_gtrxl_rejects_an_empty_memory() -> None:
    with pytest.raises(ValueError, match="memory"):
        GTrXLConfig(width=16, memory=0)
