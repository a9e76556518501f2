"""benchmarks/explain.py's occlusion cost: forward passes timed, multiplied out to every cube."""

import argparse

import explain as bench
import torch
from torch import nn


class Counting(nn.Module):
    """Stands in for the age model: counts the volumes it is given."""

    def __init__(self):
        super().__init__()
        self.volumes = 0

    def forward(self, x):
        self.volumes += x.shape[0]
        return x.flatten(1).mean(1, keepdim=True)


def test_occlusion_is_timed_per_volume_and_multiplied_by_the_cubes():
    model = Counting()
    volume = torch.zeros(1, 1, 9, 8, 13)
    args = argparse.Namespace(block=4, occlusion_batch=3, occlusion_evals=2)
    result = bench.measure_occlusion(args, torch.device("cpu"), model, volume)
    assert result["blocks"] == 2 * 2 * 3  # whole cubes only, as captum's strides give
    assert model.volumes == 3 * (1 + 2)  # a warm-up pass and two timed ones, 3 volumes each
    assert result["seconds"] == result["seconds_per_volume"] * (12 + 1)
    assert result["shape"] == [9, 8, 13]
