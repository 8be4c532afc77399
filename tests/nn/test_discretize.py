"""Uniform bins over [-1, 1]: the round trip values -> bins -> centres, and the edges."""

from __future__ import annotations

import pytest
import torch

from seqrl.nn.discretize import bin_centers, from_bins, to_bins


@pytest.mark.parametrize("bins", [1, 2, 7, 256])
def test_bin_round_trip(bins):
    every = torch.arange(bins)
    assert torch.equal(to_bins(from_bins(every, bins), bins), every)  # centre -> its own bin
    assert torch.equal(from_bins(every, bins), bin_centers(bins))
    values = torch.linspace(-1, 1, 1001)
    error = (from_bins(to_bins(values, bins), bins) - values).abs()
    assert error.max() <= 1 / bins + 1e-6  # within half a bin width (2 / bins)
    widths = torch.bincount(to_bins(values, bins), minlength=bins)
    assert widths.min() > 0 and widths.max() - widths.min() <= 2  # equal cells, none empty


def test_values_outside_the_box_go_to_the_edge_bins_and_bins_must_be_positive():
    assert to_bins(torch.tensor([-3.0, -1.0, 1.0, 5.0]), 4).tolist() == [0, 0, 3, 3]
    with pytest.raises(ValueError, match="bins must be >= 1"):
        bin_centers(0)
