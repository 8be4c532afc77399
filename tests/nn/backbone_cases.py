"""Small backbone configurations shared by the tests in tests/nn (imported as `backbone_cases`:
pytest puts this directory on sys.path, since tests/ has no __init__.py).

`CASES` names one small model per backbone and per mode worth testing separately (GPT with a
sliding window and with full causal attention; xLSTM with mixed blocks). `WINDOW` is the GPT
window and the GTrXL memory; contract tests use sequences of at least 3 * WINDOW tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from seqrl.nn import make_backbone

WIDTH = 16
WINDOW = 4
LAYERS = 2

CASES: dict[str, Callable[[], nn.Module]] = {
    "gpt": lambda: make_backbone("gpt", WIDTH, LAYERS, heads=2, window=WINDOW, max_len=64),
    "gpt-full": lambda: make_backbone("gpt", WIDTH, LAYERS, heads=2, window=None, max_len=64),
    "gtrxl": lambda: make_backbone("gtrxl", WIDTH, LAYERS, heads=2, window=WINDOW),
    "lstm": lambda: make_backbone("lstm", WIDTH, LAYERS),
    "gru": lambda: make_backbone("gru", WIDTH, LAYERS),
    "xlstm": lambda: make_backbone(
        "xlstm", WIDTH, LAYERS, heads=2, slstm_at=(1,), chunk_size=2 * WINDOW
    ),
    "mlp": lambda: make_backbone("mlp", WIDTH, LAYERS),
}

MEMORYLESS = frozenset({"mlp"})


def build(case: str, seed: int = 0) -> nn.Module:
    """The model of `case` with fixed weights, in eval mode (dropout off: exact parity)."""
    torch.manual_seed(seed)
    return CASES[case]().eval()
