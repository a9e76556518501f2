"""benchmarks/evidence_regions.py: a region replaced by the reference against the map there."""

import evidence_regions as bench
import numpy as np
import pytest
import torch
from torch import nn


class Linear(nn.Module):
    """f(x) = sum(w * x): replacing a part moves f by exactly the map's sum over it."""

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        return (x * self.weight).flatten(1).sum(1, keepdim=True)


def labels_4x4x4() -> np.ndarray:
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[:2] = bench.AGE_LABELS[0]
    labels[2, :2] = bench.MUSCLE[0]
    labels[2, 2:] = 1  # subcutaneous fat: rest of the body
    return labels


def test_part_shares_split_every_input_voxel():
    shares = bench.part_shares(labels_4x4x4(), 2)
    assert set(shares) == {"age_regions", "other_muscle", "rest_of_body", "background"}
    assert np.allclose(sum(shares.values()), 1.0)
    assert shares["age_regions"][0].min() == 1.0 and shares["age_regions"][1].max() == 0.0
    assert shares["other_muscle"][1, 0, 0] == pytest.approx(0.5)  # half muscle, half background


def test_a_linear_model_moves_by_what_the_map_gives_each_part():
    torch.manual_seed(0)
    weight = torch.zeros(1, 1, 2, 2, 2)
    weight[..., 0, :, :] = 3.0  # the model reads the age half only
    volume, reference = torch.randn(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2)
    shares = bench.part_shares(labels_4x4x4(), 2)
    row = bench.region_evidence(Linear(weight), volume, reference, shares, steps=4)
    for part in shares:
        assert row[f"{part}_replaced"] == pytest.approx(row[f"{part}_attributed"], abs=1e-4)
    assert row["age_regions_replaced"] == pytest.approx(row["total_change"], abs=1e-4)
    assert row["other_muscle_replaced"] == pytest.approx(0.0, abs=1e-6)
    summary = bench.summarise([row, {**row, "age_regions_replaced": 0.0}], list(shares))
    assert summary["age_regions"]["share_of_abs_map"] == pytest.approx(1.0)
