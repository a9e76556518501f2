"""Integrated gradients and occlusion against a reference volume (captum)."""

from __future__ import annotations

from dataclasses import asdict

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from ageatlas.age.model import build_model
from ageatlas.age.train_config import TrainConfig
from ageatlas.explain.gradcam import cam_for_participant
from ageatlas.explain.reference_attribution import attribute_against_reference, mean_volume

SHAPE = (8, 16, 16)


class _Region(nn.Module):
    """Predicts 50 + 2 x the summed input inside one block: only that block matters."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return 50 + self.scale * x[:, 0, 4:8, 8:12, 0:4].sum(dim=(1, 2, 3))


def test_integrated_gradients_are_complete():
    torch.manual_seed(0)
    model = build_model(hidden=8).eval()
    volume, reference = torch.randn(1, 1, *SHAPE), torch.zeros(1, 1, *SHAPE)
    attribution, predicted, above = attribute_against_reference(
        model, volume, reference, "integrated_gradients", steps=64
    )
    assert attribution.shape == SHAPE
    with torch.no_grad():
        assert predicted == pytest.approx(float(model(volume)[0]), rel=1e-5)
    # Completeness: the voxels' attributions add up to f(volume) - f(reference).
    assert float(attribution.sum()) == pytest.approx(above, abs=0.05 * abs(above) + 1e-3)


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_only_the_region_the_model_reads_is_attributed(method):
    volume = torch.ones(1, 1, *SHAPE)
    attribution, predicted, above = attribute_against_reference(
        _Region(), volume, torch.zeros_like(volume), method, block=4
    )
    inside = torch.zeros(SHAPE, dtype=torch.bool)
    inside[4:8, 8:12, 0:4] = True
    assert predicted == pytest.approx(50 + 2 * 64) and above == pytest.approx(128)
    assert torch.all(attribution[~inside] == 0) and torch.all(attribution[inside] > 0)


def test_shapes_and_method_are_checked():
    volume = torch.ones(1, 1, *SHAPE)
    with pytest.raises(ValueError, match="same shape"):
        attribute_against_reference(_Region(), volume, torch.zeros(1, 1, 8, 8, 8), "occlusion")
    with pytest.raises(ValueError, match="must be one of"):
        attribute_against_reference(_Region(), volume, volume, "gradcam")


def test_mean_volume_streams_and_checks_shapes():
    assert np.allclose(mean_volume(iter([np.zeros((2, 2)), np.full((2, 2), 4.0)])), 2.0)
    with pytest.raises(ValueError, match="shape"):
        mean_volume([np.zeros((2, 2)), np.zeros((2, 3))])
    with pytest.raises(ValueError, match="at least one"):
        mean_volume([])


def test_participant_map_needs_and_uses_the_reference(tmp_path):
    torch.manual_seed(0)
    model = build_model(hidden=8).eval()
    cache = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    np.save(tmp_path / "cache.npy", cache)
    np.save(tmp_path / "reference.npy", np.zeros(SHAPE, np.float32))
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), np.eye(4)), tmp_path / "water.nii.gz")
    torch.save(
        {"model": model.state_dict(), "config": asdict(TrainConfig(hidden=8))},
        tmp_path / "checkpoint.pt",
    )
    args = (tmp_path / "checkpoint.pt", tmp_path / "cache.npy", tmp_path / "water.nii.gz")
    with pytest.raises(ValueError, match="reference volume"):
        cam_for_participant(*args, tmp_path / "m.nii.gz", method="integrated_gradients")
    info = cam_for_participant(
        *args,
        tmp_path / "m.nii.gz",
        method="integrated_gradients",
        normalise=False,
        reference_path=tmp_path / "reference.npy",
        device="cpu",
    )
    saved = nib.load(tmp_path / "m.nii.gz").get_fdata()
    assert saved.shape == SHAPE and (saved < 0).any() and (saved > 0).any()  # signed, in years
    assert float(saved.sum()) == pytest.approx(info["attribution_sum"], abs=1e-3)


def test_reference_volume_counts_the_drawn_background_as_zero(tmp_path):
    from ageatlas.explain.reference_attribution import reference_volume

    np.save(tmp_path / "a.npy", np.array([[np.nan, 2.0]], dtype=np.float16))
    np.save(tmp_path / "b.npy", np.array([[4.0, 4.0]], dtype=np.float16))
    assert np.allclose(reference_volume([tmp_path / "a.npy", tmp_path / "b.npy"]), [[2.0, 3.0]])
