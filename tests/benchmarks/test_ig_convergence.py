"""benchmarks/ig_convergence.py: fewer integrated-gradients steps compared with the most."""

import ig_convergence as bench
import pytest
import torch
from torch import nn


class Curved(nn.Module):
    """A model whose gradient changes along the path, so few steps miss the integral."""

    def forward(self, x):
        return torch.exp(3 * x.flatten(1)).sum(1, keepdim=True)


def test_agreement_reports_each_steps_gap_and_correlation_with_the_finest():
    torch.manual_seed(0)
    volume = torch.randn(1, 1, 4, 4, 4)
    reference = torch.zeros_like(volume)
    rows = bench.agreement(Curved(), volume, reference, [64, 2])
    assert [r["steps"] for r in rows] == [2, 64]
    coarse, finest = rows
    assert finest["correlation_with_finest"] == pytest.approx(1.0)
    assert finest["completeness_gap"] < 1e-3 * float(torch.exp(3 * volume).sum())
    assert coarse["completeness_gap"] > 5 * finest["completeness_gap"]
