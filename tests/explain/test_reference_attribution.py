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
from ageatlas.explain.reference_attribution import (
    attribute_against_reference,
    mean_volume,
    shift_offsets,
)

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


class _StrideGrid(nn.Module):
    """A linear model whose weight is 1 plus a +-1 checkerboard: the pattern a stride-2 grid
    leaves in gradients, on top of a uniform dependence on every voxel."""

    def __init__(self, shape):
        super().__init__()
        index = np.indices(shape).sum(axis=0)
        self.register_buffer("weight", torch.from_numpy(1.0 + (-1.0) ** index).float())

    def forward(self, x):
        return (x[:, 0] * self.weight).sum(dim=(1, 2, 3))


def test_shift_averaging_removes_the_stride_grid_pattern_and_keeps_the_evidence():
    torch.manual_seed(0)
    volume, reference = torch.randn(1, 1, *SHAPE), torch.zeros(1, 1, *SHAPE)
    model = _StrideGrid(SHAPE)
    one, _, _ = attribute_against_reference(
        model, volume, reference, "integrated_gradients", steps=4
    )
    averaged, predicted, _ = attribute_against_reference(
        model, volume, reference, "integrated_gradients", steps=4, shifts=2
    )
    # One map: (volume - reference) x weight, the checkerboard in it (0 or 2 a voxel).
    torch.testing.assert_close(one, volume[0, 0] * model.weight, rtol=1e-4, atol=1e-5)
    # Over the 8 offsets of {0, 1}^3 each voxel meets both signs of the grid equally often:
    # what is left is the uniform dependence, on the voxel that carries it.
    torch.testing.assert_close(averaged, volume[0, 0], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert predicted == pytest.approx(float(model(volume)[0]), rel=1e-5)  # unshifted
    assert len(shift_offsets(2)) == 8 and shift_offsets(1) == [(0, 0, 0)]


def test_shift_averaging_keeps_a_region_where_it_is():
    volume = torch.ones(1, 1, *SHAPE)
    attribution, _, _ = attribute_against_reference(
        _Region(), volume, torch.zeros_like(volume), "integrated_gradients", shifts=2
    )
    inside = torch.zeros(SHAPE, dtype=torch.bool)
    inside[4:8, 8:12, 0:4] = True
    # Shifted inputs move the block under the fixed region the model reads; shifted back,
    # the attributions stay within one voxel of it and keep the total.
    near = torch.zeros(SHAPE, dtype=torch.bool)
    near[3:8, 7:12, 0:4] = True
    near[3:8, 7:12, 15] = True  # circular: offset 1 along the last axis wraps voxel 15 in
    assert torch.all(attribution[~near] == 0) and float(attribution[inside].min()) > 0
    assert float(attribution.sum()) == pytest.approx(128, rel=1e-4)


def test_shifts_are_for_integrated_gradients():
    volume = torch.ones(1, 1, *SHAPE)
    with pytest.raises(ValueError, match="shifts"):
        attribute_against_reference(_Region(), volume, volume * 0, "occlusion", shifts=2)
    with pytest.raises(ValueError, match="shifts"):
        attribute_against_reference(_Region(), volume, volume * 0, "integrated_gradients", shifts=0)
    # A layer method's map is not shift-averaged: the config is refused, before any file is read.
    with pytest.raises(ValueError, match="shifts apply to integrated_gradients"):
        cam_for_participant(
            "no.pt", "no.npy", "no.nii.gz", "out.nii.gz", method="hirescam", shifts=2
        )


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


def test_atlas_reference_is_scaled_as_a_cache_and_keeps_the_background():
    from ageatlas.age.preprocess import downsample, normalise
    from ageatlas.explain.reference_attribution import atlas_reference

    rng = np.random.default_rng(1)
    atlas = np.zeros((8, 8, 8), np.float32)
    atlas[2:6, 2:6, 2:8] = rng.uniform(100, 300, (4, 4, 6))
    cached = np.full((4, 4, 4), np.nan, np.float32)
    cached[1:3, 1:3, 1:4] = 0.5
    drawn = rng.standard_normal(cached.shape).astype(np.float32)
    model_input = np.where(np.isnan(cached), drawn, cached)
    reference = atlas_reference(atlas, cached, model_input, 2)
    tissue = ~np.isnan(cached)
    # Where the participant has tissue: the atlas z-scored as a cache would be.
    expected = normalise(downsample(atlas, 2), background="zero")
    np.testing.assert_allclose(reference[tissue], expected[tissue], rtol=1e-6)
    # Elsewhere: the participant's own drawn background, so it adds nothing.
    np.testing.assert_array_equal(reference[~tissue], model_input[~tissue])
    with pytest.raises(ValueError, match="shape"):
        atlas_reference(atlas, cached[:2], model_input, 2)
    with pytest.raises(ValueError, match="no tissue"):
        atlas_reference(np.zeros_like(atlas), cached, model_input, 2)


def _identity_registration(image: nib.Nifti1Image):
    from deepali import spatial

    from ageatlas.explain.registration_settings import RegistrationSettings
    from ageatlas.explain.registration_transform import Registration, grid_from_nifti

    grid = grid_from_nifti(image.affine, image.shape)
    return Registration(grid, grid, spatial.AffineTransform(grid), None, RegistrationSettings())


def test_participant_map_against_its_group_atlas(tmp_path):
    """The atlas brought into the participant's body, scaled as the cache is: a participant
    whose body is the atlas gets a reference equal to their input, and nothing to attribute."""
    from ageatlas.age.preprocess import prepare
    from ageatlas.explain.registration_transform import save_outcome

    torch.manual_seed(0)
    model = build_model(hidden=8).eval()
    water = np.zeros((16, 32, 32), np.float32)
    water[4:12, 6:26, 4:28] = np.random.default_rng(0).uniform(50, 250, (8, 20, 24))
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    image = nib.Nifti1Image(water, affine)
    nib.save(image, tmp_path / "water.nii.gz")
    nib.save(image, tmp_path / "atlas.nii.gz")
    prepare(tmp_path / "water.nii.gz", tmp_path / "cache.npy", downsample_factor=2)
    registration = _identity_registration(image)
    save_outcome(registration, {}, tmp_path / "reg.pt", tmp_path / "reg.json")
    torch.save(
        {"model": model.state_dict(), "config": asdict(TrainConfig(hidden=8))},
        tmp_path / "checkpoint.pt",
    )
    args = (tmp_path / "checkpoint.pt", tmp_path / "cache.npy", tmp_path / "water.nii.gz")
    options = dict(method="integrated_gradients", normalise=False, device="cpu")
    info = cam_for_participant(
        *args,
        tmp_path / "m.nii.gz",
        atlas=(tmp_path / "atlas.nii.gz", tmp_path / "reg.pt"),
        **options,
    )
    assert info["reference"] == str(tmp_path / "atlas.nii.gz")
    # float16 cache against the float32 reference: a rounding's worth of difference.
    assert abs(info["above_reference"]) < 1e-2
    assert np.abs(nib.load(tmp_path / "m.nii.gz").get_fdata()).max() < 1e-2
    # An atlas that differs from the body in one place: importance sits there.
    changed = water.copy()
    changed[4:8, 6:14, 4:12] *= 0.3
    nib.save(nib.Nifti1Image(changed, affine), tmp_path / "atlas2.nii.gz")
    cam_for_participant(
        *args,
        tmp_path / "m2.nii.gz",
        atlas=(tmp_path / "atlas2.nii.gz", tmp_path / "reg.pt"),
        **options,
    )
    importance = np.abs(nib.load(tmp_path / "m2.nii.gz").get_fdata())
    inside = np.zeros(water.shape, bool)
    inside[4:8, 6:14, 4:12] = True
    body = water > 0
    assert importance[inside].mean() > 5 * importance[body & ~inside].mean()
    # A failed registration is this participant's error, naming the file.
    save_outcome(None, {"reasons": ["folding"]}, tmp_path / "bad.pt", tmp_path / "bad.json")
    with pytest.raises(RuntimeError, match="bad.pt"):
        cam_for_participant(
            *args,
            tmp_path / "m3.nii.gz",
            atlas=(tmp_path / "atlas.nii.gz", tmp_path / "bad.pt"),
            **options,
        )


def test_integrated_gradients_hold_one_full_grid_volume_per_pass():
    from ageatlas.explain.reference_attribution import volumes_per_pass

    assert volumes_per_pass("integrated_gradients", (224, 174, 370)) == 1
    assert volumes_per_pass("integrated_gradients", (112, 87, 185)) == 8
    assert volumes_per_pass("occlusion", (224, 174, 370)) == 4


@pytest.mark.parametrize("volumes", [1, 2])
def test_integrated_gradients_run_the_volumes_per_pass_the_memory_allows(
    tmp_path, monkeypatch, volumes
):
    """Each step keeps its activations for the backward pass: the workflow's jobs ask for the
    memory of one full-grid volume a pass (benchmarks/explain.py measures it so)."""
    from ageatlas.explain import reference_attribution

    monkeypatch.setattr(reference_attribution, "IG_VOXELS_PER_PASS", volumes * np.prod(SHAPE))
    torch.manual_seed(0)
    model = build_model(hidden=8).eval()
    np.save(tmp_path / "cache.npy", np.ones(SHAPE, np.float32))
    np.save(tmp_path / "reference.npy", np.zeros(SHAPE, np.float32))
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), np.eye(4)), tmp_path / "water.nii.gz")
    torch.save(
        {"model": model.state_dict(), "config": asdict(TrainConfig(hidden=8))},
        tmp_path / "checkpoint.pt",
    )
    grad_batches = []

    def record(module, inputs, output):
        if isinstance(module, nn.Conv3d) and torch.is_grad_enabled():
            grad_batches.append(inputs[0].shape[0])

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        cam_for_participant(
            tmp_path / "checkpoint.pt",
            tmp_path / "cache.npy",
            tmp_path / "water.nii.gz",
            tmp_path / "m.nii.gz",
            method="integrated_gradients",
            reference_path=tmp_path / "reference.npy",
            steps=8,
            device="cpu",
        )
    finally:
        handle.remove()
    assert grad_batches and max(grad_batches) == volumes
