"""Uniform bins over [-1, 1]: continuous model-unit values <-> bin indices, per dimension.

Q-Transformer (and RT-1 before it) discretizes each action dimension into `bins` equal cells over
the model-unit box [-1, 1] (`seqrl.nn.heads.ActionScaling` maps env units there first). Bin k
covers [-1 + 2k/bins, -1 + 2(k+1)/bins) and acts at its centre:

```
   -1                                     +1      value (model units)
    |  bin 0  |  bin 1  |  ...  | bin n-1 |
        c_0       c_1              c_{n-1}        c_k = -1 + (2k + 1) / n
```

So `from_bins(to_bins(x))` is within half a bin width (1 / n) of x for x in [-1, 1], and
`to_bins(from_bins(k)) == k` for every bin. Values outside [-1, 1] go to the first / last bin.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_bins(bins: int) -> None:
    if bins < 1:
        raise ValueError(f"bins must be >= 1; got {bins}.")


def bin_centers(bins: int, device: torch.device | str | None = None) -> Tensor:
    """(bins,) float32: the centre of every bin, c_k = -1 + (2k + 1) / bins."""
    _check_bins(bins)
    steps = torch.arange(bins, dtype=torch.float32, device=device)
    return -1.0 + (2.0 * steps + 1.0) / bins  # (bins,)


def to_bins(values: Tensor, bins: int) -> Tensor:
    """(...) model-unit values -> (...) int64 bin indices in [0, bins) (clamped at the edges)."""
    _check_bins(bins)
    index = torch.floor((values.float() + 1.0) * (bins / 2.0)).long()
    return index.clamp(0, bins - 1)


def from_bins(indices: Tensor, bins: int) -> Tensor:
    """(...) int64 bin indices -> (...) float32 bin centres in model units."""
    _check_bins(bins)
    return -1.0 + (2.0 * indices.float() + 1.0) / bins
