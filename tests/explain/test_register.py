"""Tests for ageatlas.explain.register on small synthetic blob volumes."""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from deepali import spatial

from ageatlas.explain import register as reg
from ageatlas.explain.register import (
    Registration,
    RegistrationFailed,
    folding_share,
    grid_from_nifti,
    load_outcome,
    normalise_for_registration,
    qc_reasons,
    register,
    register_files,
    save_outcome,
)
from ageatlas.explain.registration_settings import (
    RegistrationSettings,
    lncc_kernel_for,
    settings_from_config,
    stride_for,
)

SHAPE = (32, 32, 48)
SPACING = (2.232, 2.232, 3.0)
FAST = RegistrationSettings(
    affine_iterations=40, affine_lr=0.05, levels=2, deformable_lr=1e-2, max_steps=20
)


def _affine(origin) -> np.ndarray:
    # Non-identity orientation (flipped first axis) with anisotropic spacing.
    affine = np.diag([-SPACING[0], SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = origin
    return affine


def _world(affine: np.ndarray) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _phantom(points: np.ndarray):
    """Soft ellipsoid body with an off-centre inner organ; labels 0/1/2."""
    body = ((points / np.array([22.0, 20.0, 45.0])) ** 2).sum(-1)
    organ = (((points - np.array([6.0, -4.0, 10.0])) / np.array([8.0, 7.0, 14.0])) ** 2).sum(-1)
    image = 1 / (1 + np.exp((body - 1) * 8)) + 0.8 / (1 + np.exp((organ - 1) * 6))
    labels = (body < 1).astype(np.int16) + ((organ < 1) & (body < 1))
    return image.astype(np.float32), labels.astype(np.int16)


def _moving_points(points: np.ndarray) -> np.ndarray:
    """Fixed-space location of each moving-image point: scale, shift, bend."""
    shifted = (points - np.array([5.0, -4.0, 8.0])) / 1.12
    bend = 3.0 * np.sin(points[..., 2:3] / 15.0) * np.array([1.0, 0.0, 0.0])
    return shifted + bend


@pytest.fixture(scope="module")
def pair():
    fixed_affine, moving_affine = _affine([35.0, -30.0, -70.0]), _affine([38.0, -33.0, -66.0])
    fixed_img, fixed_lab = _phantom(_world(fixed_affine))
    moving_img, moving_lab = _phantom(_moving_points(_world(moving_affine)))
    return {
        "fixed": nib.Nifti1Image(fixed_img, fixed_affine),
        "moving": nib.Nifti1Image(moving_img * 500.0, moving_affine),
        "fixed_labels": fixed_lab,
        "moving_labels": nib.Nifti1Image(moving_lab, moving_affine),
    }


@pytest.fixture(scope="module")
def result(pair):
    return register(pair["moving"], pair["fixed"], FAST)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(
        np.mean(
            [2 * ((a == k) & (b == k)).sum() / ((a == k).sum() + (b == k).sum()) for k in (1, 2)]
        )
    )


def test_defaults_match_method_notes():
    s = RegistrationSettings()
    assert (s.affine_iterations, s.affine_lr, s.levels, s.finest_level) == (200, 0.01, 3, 0)
    assert (s.bending_weight, s.deformable_lr, s.max_steps) == (0.01, 1e-3, 1000)
    assert (s.scaling_squaring_steps, s.clip) == (5, 0.6)
    # In millimetres, they are the authors' voxel choices at UK Biobank's full grid.
    ukbb = (2.232, 2.232, 3.0)
    assert s.stride_for(ukbb) == (4, 4, 8)
    assert s.lncc_kernel_for(ukbb) == (7, 7, 7)


def test_control_point_spacing_to_stride():
    assert stride_for((8.928, 8.928, 24.0), (2.232, 2.232, 3.0)) == (4, 4, 8)
    # The demo grid at half resolution (level 1): the old stride (4, 4, 8) was 71 x 71 x 192 mm.
    assert stride_for((36.0, 36.0, 48.0), (17.86, 17.86, 24.0)) == (2, 2, 2)
    assert stride_for((9.0, 9.0, 24.0), (17.86, 17.86, 24.0)) == (1, 1, 1)  # at least 1
    assert stride_for((30.0, 30.0, 30.0), (8.0, 12.0, 20.0)) == (4, 2, 2)  # nearest


def test_lncc_window_to_odd_kernel_per_level():
    window = (15.624, 15.624, 21.0)
    assert lncc_kernel_for(window, (2.232, 2.232, 3.0)) == (7, 7, 7)
    assert lncc_kernel_for(window, (4.464, 4.464, 6.0)) == (3, 3, 3)  # 3.5 voxels -> 3
    assert lncc_kernel_for(window, (8.928, 8.928, 12.0)) == (3, 3, 3)  # at least 3
    assert lncc_kernel_for((40.0, 40.0, 40.0), (8.0, 6.0, 4.0)) == (5, 7, 11)
    assert all(k % 2 == 1 for k in lncc_kernel_for((30.0,) * 3, (4.0, 5.0, 6.0)))
    # never wider than the grid
    assert RegistrationSettings(lncc_window_mm=(80.0,) * 3).lncc_kernel_for(
        (2.0,) * 3, (9, 8, 50)
    ) == (9, 7, 41)


def test_level_plan_doubles_spacing_per_coarser_level(pair):
    from ageatlas.explain.register import level_plan, to_image

    settings = RegistrationSettings(
        levels=3, finest_level=1, control_point_spacing_mm=(18.0, 18.0, 24.0)
    )
    levels = to_image(pair["fixed"], 0.6, "cpu").pyramid(3)
    plan = level_plan(levels, settings)
    assert set(plan) == {2, 1}
    voxel = plan[1]["voxel_mm"]
    assert plan[1]["stride"] == list(stride_for((18.0, 18.0, 24.0), voxel))
    for a, b in zip(plan[2]["control_point_spacing_mm"], plan[1]["control_point_spacing_mm"]):
        assert a == pytest.approx(2 * b, rel=0.1)


def test_settings_validation_errors():
    with pytest.raises(ValueError, match="finest_level must be in"):
        RegistrationSettings(levels=2, finest_level=2)
    with pytest.raises(ValueError, match="levels must be at least 1"):
        RegistrationSettings(levels=0)
    with pytest.raises(ValueError, match="control_point_spacing_mm must be 3 positive"):
        RegistrationSettings(control_point_spacing_mm=(9.0, 0.0, 24.0))
    with pytest.raises(ValueError, match="lncc_window_mm must be 3 positive"):
        RegistrationSettings(lncc_window_mm=(15.0, 15.0))
    with pytest.raises(ValueError, match="not both"):
        settings_from_config({"stride": [4, 4, 8], "control_point_spacing_mm": [9, 9, 24]})
    with pytest.raises(ValueError, match="not both"):
        settings_from_config({"lncc_kernel": 3, "lncc_window_mm": [15, 15, 21]})


def test_too_many_levels_is_a_clear_error(pair):
    # 32 x 32 x 48 voxels: the 5th level would be 2-3 voxels wide.
    with pytest.raises(ValueError, match="too many for the fixed image"):
        register(pair["moving"], pair["fixed"], RegistrationSettings(levels=5, max_steps=1))


def test_normalise_clips_and_rescales():
    out = normalise_for_registration(np.array([0.0, 30.0, 60.0, 100.0]))
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0, 1.0])
    assert normalise_for_registration(np.ones(3)).max() == 0


def test_grid_keeps_world_geometry():
    affine = _affine([35.0, -30.0, -70.0])
    grid = grid_from_nifti(affine, SHAPE)
    index = np.array([[3.0, 5.0, 7.0]])
    world_lps = grid.index_to_world(index).numpy()
    world_ras = affine[:3, :3] @ index[0] + affine[:3, 3]
    np.testing.assert_allclose(world_lps[0], world_ras * np.array([-1, -1, 1]), atol=1e-4)


def test_similarity_improves_affine_then_deformable(result):
    m = result.metrics
    # 1 - NCC is the residual dissimilarity; each stage must shrink it clearly.
    assert 1 - m["affine"]["ncc"] < 0.3 * (1 - m["before"]["ncc"])
    assert 1 - m["deformable"]["ncc"] < 0.5 * (1 - m["affine"]["ncc"])
    assert m["deformable"]["mse"] < m["affine"]["mse"] < m["before"]["mse"]
    assert m["seconds"] > 0


def test_warped_image_approaches_fixed(pair, result):
    fixed = normalise_for_registration(pair["fixed"].get_fdata())
    moving = normalise_for_registration(pair["moving"].get_fdata())
    warped = result.warp(nib.Nifti1Image(moving, pair["moving"].affine))
    assert warped.shape == SHAPE
    np.testing.assert_allclose(warped.affine, pair["fixed"].affine, atol=1e-4)
    before = np.abs(moving - fixed).mean()
    after = np.abs(warped.get_fdata() - fixed).mean()
    assert after < 0.5 * before


def test_pull_back_brings_the_atlas_into_the_participant(pair, result):
    # The inverse direction: the fixed image (the atlas) resampled into the
    # moving image's space should look like the moving image there.
    fixed = normalise_for_registration(pair["fixed"].get_fdata())
    moving = normalise_for_registration(pair["moving"].get_fdata())
    pulled = result.pull_back(nib.Nifti1Image(fixed, pair["fixed"].affine))
    assert pulled.shape == SHAPE
    np.testing.assert_allclose(pulled.affine, pair["moving"].affine, atol=1e-4)
    before = np.abs(fixed - moving).mean()
    assert np.abs(pulled.get_fdata() - moving).mean() < 0.5 * before
    with pytest.raises(ValueError, match="fixed"):
        result.pull_back(pair["moving"])


def test_label_warp_keeps_labels_and_improves_dice(pair, result):
    warped = result.warp(pair["moving_labels"], order=0)
    data = np.asanyarray(warped.dataobj)
    assert data.dtype == np.int16
    assert set(np.unique(data)) <= {0, 1, 2}
    before = _dice(np.asanyarray(pair["moving_labels"].dataobj), pair["fixed_labels"])
    after = _dice(data, pair["fixed_labels"])
    assert after > before + 0.05 and after > 0.8


def test_no_folding(result):
    assert result.metrics["folding_share"] < 1e-3


def test_warp_rejects_other_grid(pair, result):
    with pytest.raises(ValueError):
        result.warp(pair["fixed"])


def test_save_load_round_trip(tmp_path, pair, result):
    path = tmp_path / "reg.pt"
    result.save(path)
    loaded = Registration.load(path)
    assert loaded.settings == result.settings
    a = result.warp(pair["moving"]).get_fdata()
    b = loaded.warp(pair["moving"]).get_fdata()
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_deformable_stops_when_loss_stops_falling(pair):
    # A huge min_delta makes any level count as converged after `patience` steps.
    quick = RegistrationSettings(
        affine_iterations=2, levels=1, max_steps=500, min_delta=0.5, patience=3
    )
    steps = register(pair["moving"], pair["fixed"], quick).metrics["deformable_steps"]
    assert steps == {0: 4}


def _one_level(pair, settings):
    """An SVFFD at zero, an identity affine and the pair as deepali images: one level's inputs."""
    moving = reg.to_image(pair["moving"], settings.clip, torch.device("cpu"))
    fixed = reg.to_image(pair["fixed"], settings.clip, torch.device("cpu"))
    svffd = spatial.StationaryVelocityFreeFormDeformation(fixed.grid(), stride=(4, 4, 4), steps=5)
    return svffd, spatial.AffineTransform(fixed.grid()), moving, fixed


def test_level_ends_on_its_best_parameters(pair):
    # A learning rate far too large throws the field about; the level must still not end
    # worse than it began (it used to keep whatever its last step left).
    settings = RegistrationSettings(levels=1, deformable_lr=0.5, max_steps=6, patience=100)
    svffd, affine, moving, fixed = _one_level(pair, settings)
    objective = reg.level_objective(svffd, affine, moving, fixed, settings)
    with torch.no_grad():
        start = float(sum(objective()))
    assert reg._fit_level(svffd, affine, moving, fixed, settings) == 6
    with torch.no_grad():
        assert float(sum(objective())) <= start + 1e-6


def test_warmup_scales_the_first_step(pair):
    # Adam's first step moves each parameter by about the learning rate; warm-up over 10
    # steps makes it a tenth. Two steps: the parameters after the first step (a small one
    # here, so it lowers the loss and is kept).
    lr = 0.005
    moved = {}
    for warmup in (0, 10):
        settings = RegistrationSettings(
            levels=1, deformable_lr=lr, max_steps=2, patience=100, warmup_steps=warmup
        )
        svffd, affine, moving, fixed = _one_level(pair, settings)
        reg._fit_level(svffd, affine, moving, fixed, settings)
        moved[warmup] = float(svffd.data().abs().max())
    assert 0.5 * lr < moved[0] <= 1.01 * lr
    assert 0 < moved[10] <= 1.01 * lr / 10


def test_trace_records_every_step_of_every_level(pair):
    settings = RegistrationSettings(affine_iterations=5, levels=2, max_steps=7, patience=100)
    trace = {}
    steps = register(pair["moving"], pair["fixed"], settings, trace=trace).metrics[
        "deformable_steps"
    ]
    assert sorted(trace) == [0, 1]
    assert {level: len(terms) for level, terms in trace.items()} == steps == {0: 7, 1: 7}
    assert all(similarity < 1 and bending >= 0 for similarity, bending in trace[0])


def test_warmup_steps_is_checked():
    with pytest.raises(ValueError, match="warmup_steps"):
        RegistrationSettings(warmup_steps=-1)


def test_folding_share_detects_folds():
    # A plain FFD with large random coefficients folds; a zero one does not.
    grid = grid_from_nifti(_affine([0.0, 0.0, 0.0]), SHAPE)
    ffd = spatial.FreeFormDeformation(grid, stride=(4, 4, 8))
    assert folding_share(ffd) == 0
    torch.manual_seed(0)
    ffd.data_(torch.randn_like(ffd.data()) * 0.3)
    assert folding_share(ffd) > 0.02


def test_finest_level_fits_at_half_resolution_and_warps_full_grid(pair):
    settings = RegistrationSettings(
        affine_iterations=40,
        affine_lr=0.05,
        levels=2,
        finest_level=1,
        deformable_lr=1e-2,
        max_steps=20,
    )
    half = register(pair["moving"], pair["fixed"], settings)
    assert set(half.metrics["deformable_steps"]) == {1}
    assert half.metrics["before"]["ncc"] < 0.85 and half.metrics["deformable"]["ncc"] > 0.99
    warped = half.warp(pair["moving_labels"], order=0)
    assert warped.shape == pair["fixed"].shape and np.allclose(
        warped.affine, pair["fixed"].affine, atol=1e-3
    )
    with pytest.raises(ValueError, match="finest_level"):
        register(pair["moving"], pair["fixed"], RegistrationSettings(levels=2, finest_level=2))


def _record_affine_grids(monkeypatch) -> list:
    """The grid size (x, y, z) of every level the affine is fitted on, as register runs."""
    seen = []
    fit_affine = reg._fit_affine

    def recording(moving, fixed, settings):
        seen.append(tuple(int(n) for n in fixed.grid().size()))
        return fit_affine(moving, fixed, settings)

    monkeypatch.setattr(reg, "_fit_affine", recording)
    return seen


# deepali resamples a 2-level pyramid of 32 x 32 x 48 so that level 1 subdivides into
# level 0: 33 x 33 x 49 and 17 x 17 x 25.
@pytest.mark.parametrize("affine_level, fitted", [(None, (17, 17, 25)), (0, (33, 33, 49))])
def test_affine_fits_at_affine_level(pair, monkeypatch, affine_level, fitted):
    # The affine fit runs at affine_level (by default finest_level) whatever level the
    # deformable fit stops at.
    seen = _record_affine_grids(monkeypatch)
    settings = RegistrationSettings(
        affine_iterations=5, levels=2, finest_level=1, affine_level=affine_level, max_steps=2
    )
    result = register(pair["moving"], pair["fixed"], settings)
    assert seen == [fitted]
    assert result.warp(pair["moving_labels"], order=0).shape == pair["fixed"].shape


def test_affine_level_is_checked():
    with pytest.raises(ValueError, match="affine_level must be in"):
        RegistrationSettings(levels=2, affine_level=2)
    assert RegistrationSettings(levels=3, finest_level=1).affine_fit_level == 1
    assert RegistrationSettings(levels=3, finest_level=1, affine_level=0).affine_fit_level == 0


def test_pyramid_axes_keep_the_slice_axis(pair, monkeypatch):
    # With pyramid_axes (x, y) a coarser level halves x and y only: the 48 slices stay.
    seen = _record_affine_grids(monkeypatch)
    settings = RegistrationSettings(
        affine_iterations=5, levels=2, finest_level=1, max_steps=2, pyramid_axes=("x", "y")
    )
    result = register(pair["moving"], pair["fixed"], settings)
    assert seen == [(17, 17, 48)]
    assert result.metrics["levels"][1]["voxel_mm"][2] == pytest.approx(
        float(pair["fixed"].header.get_zooms()[2])
    )
    assert result.warp(pair["moving_labels"], order=0).shape == pair["fixed"].shape


@pytest.mark.parametrize("axes", [(), ("x", "x"), ("x", "w")])
def test_pyramid_axes_are_checked(axes):
    with pytest.raises(ValueError, match="pyramid_axes must be distinct axes"):
        RegistrationSettings(pyramid_axes=axes)


def test_displacement_of_a_pure_shift_is_the_shift(pair):
    fixed = pair["fixed"]
    shifted_affine = fixed.affine.copy()
    shifted_affine[2, 3] += 6.0  # same content 6 mm superior (RAS z = LPS z)
    moving = nib.Nifti1Image(np.asanyarray(fixed.dataobj), shifted_affine)
    settings = RegistrationSettings(affine_iterations=150, affine_lr=0.02, levels=1, max_steps=5)
    disp = register(moving, fixed, settings).displacement_mm()
    assert disp.shape == fixed.shape[::-1] + (3,)
    np.testing.assert_allclose(disp.reshape(-1, 3).mean(0), [0.0, 0.0, 6.0], atol=1.0)


def test_qc_reasons():
    good = {
        "before": {"ncc": 0.8},
        "affine": {"ncc": 0.85},
        "deformable": {"ncc": 0.9},
        "folding_share": 0.0,
    }
    assert qc_reasons(good, 0.001) == []
    worse = {**good, "deformable": {"ncc": 0.7}}
    assert "worse" in qc_reasons(worse, 0.001)[0]
    # a self-registration that loses a hair of similarity is not "worse"
    assert qc_reasons({**good, "before": {"ncc": 1.0}, "deformable": {"ncc": 0.999}}, 0.001) == []
    assert "folding" in qc_reasons({**good, "folding_share": 0.01}, 0.001)[0]
    assert "non-finite" in qc_reasons({**good, "affine": {"ncc": float("nan")}}, 0.001)[0]


def test_failed_registration_is_a_record_and_a_marker(tmp_path, pair):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    fixed = tmp_path / "fixed.nii.gz"
    nib.save(pair["fixed"], fixed)
    registration, record = register_files(broken, fixed, FAST, max_folding_share=0.001)
    assert registration is None and record["status"] == "failed" and record["reasons"]
    save_outcome(registration, record, tmp_path / "t.pt", tmp_path / "t.json")
    with pytest.raises(RegistrationFailed, match="registration failed"):
        load_outcome(tmp_path / "t.pt")


def test_outcome_round_trip(tmp_path, pair, result):
    record = {"status": "ok", "reasons": [], **result.metrics}
    save_outcome(result, record, tmp_path / "t.pt", tmp_path / "t.json")
    loaded = load_outcome(tmp_path / "t.pt")
    np.testing.assert_allclose(
        loaded.warp(pair["moving"]).get_fdata(), result.warp(pair["moving"]).get_fdata(), atol=1e-5
    )


def test_settings_from_config_ignores_other_keys():
    settings = settings_from_config(
        {
            "control_point_spacing_mm": [18, 18, 24],
            "lncc_window_mm": [20, 20, 20],
            "levels": 2,
            "max_folding_share": 0.1,
            "gpus": 1,
        }
    )
    assert settings.control_point_spacing_mm == (18.0, 18.0, 24.0) and settings.levels == 2
    assert settings.lncc_window_mm == (20.0, 20.0, 20.0) and settings.stride is None


def test_voxel_settings_still_read_and_win():
    settings = settings_from_config({"stride": [2, 2, 4], "lncc_kernel": 3, "levels": 2})
    assert settings.stride == (2, 2, 4) and settings.levels == 2
    assert settings.stride_for((1.0, 1.0, 1.0)) == (2, 2, 4)
    assert settings.lncc_kernel_for((1.0, 1.0, 1.0)) == (3, 3, 3)


def test_coverage_marks_outside_the_field_of_view_nan(pair):
    # The moving image covers only the upper half (z) of the fixed grid; identity transform.
    fixed = pair["fixed"]
    half = SHAPE[2] // 2
    moving_affine = fixed.affine.copy()
    moving_affine[:3, 3] = fixed.affine[:3, :3] @ np.array([0.0, 0.0, half]) + fixed.affine[:3, 3]
    data = np.asanyarray(fixed.dataobj)[:, :, half:] + 1.0
    grid_f, grid_m = (
        grid_from_nifti(fixed.affine, SHAPE),
        grid_from_nifti(moving_affine, data.shape),
    )
    identity = Registration(
        grid_f, grid_m, spatial.AffineTransform(grid_f), None, RegistrationSettings()
    )
    warped = np.asanyarray(
        identity.warp(nib.Nifti1Image(data, moving_affine), mark_outside=True).dataobj
    )
    inside = np.zeros(SHAPE, bool)
    inside[:, :, half:] = True
    np.testing.assert_array_equal(np.isnan(warped), ~inside)
    np.testing.assert_allclose(warped[inside], data.ravel(), atol=1e-4)
    np.testing.assert_array_equal(identity.coverage(), inside)
    # without mark_outside, and for labels, outside stays 0
    plain = np.asanyarray(identity.warp(nib.Nifti1Image(data, moving_affine)).dataobj)
    assert not np.isnan(plain).any() and np.abs(plain[~inside]).max() < 1e-3
    labels = nib.Nifti1Image((data > 1.5).astype(np.int16), moving_affine)
    assert (np.asanyarray(identity.warp(labels, order=0).dataobj)[~inside] == 0).all()
    with pytest.raises(ValueError, match="mark_outside"):
        identity.warp(labels, order=0, mark_outside=True)


def test_coverage_follows_the_transform(pair, result):
    # A registered moving image (shifted, scaled) covers part of the fixed grid;
    # NaN exactly where the transform maps outside it.
    warped = np.asanyarray(result.warp(pair["moving"], mark_outside=True).dataobj)
    covered = result.coverage()
    np.testing.assert_array_equal(np.isnan(warped), ~covered)
    assert 0 < covered.mean() < 1


def test_old_transform_state_loads_with_voxel_settings(tmp_path, pair, result):
    state = {
        "fixed_grid": torch.from_numpy(result.fixed_grid.numpy()),
        "moving_grid": torch.from_numpy(result.moving_grid.numpy()),
        "affine": dict(result.affine.state_dict()),
        "svffd": None,
        "settings": {"stride": [4, 4, 8], "lncc_kernel": 7, "levels": 3, "finest_level": 0},
        "metrics": {},
    }
    loaded = Registration.from_state(state)
    assert loaded.settings.stride == (4, 4, 8) and loaded.settings.lncc_kernel == 7


# Few steps: these tests are about who registers what where, not about how well.
QUICK = RegistrationSettings(
    affine_iterations=10, affine_lr=0.05, levels=2, deformable_lr=1e-2, max_steps=4
)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def files(tmp_path, pair):
    paths = {name: tmp_path / f"{name}.nii.gz" for name in ("fixed", "moving")}
    for name, path in paths.items():
        nib.save(pair[name], path)
    paths["broken"] = tmp_path / "broken.nii.gz"
    paths["broken"].write_bytes(b"not a nifti")
    return paths


def test_register_many_prepares_the_atlas_once_and_registers_as_register_files(files, monkeypatch):
    prepared = []
    real = reg.prepare_fixed
    monkeypatch.setattr(reg, "prepare_fixed", lambda *a, **k: prepared.append(1) or real(*a, **k))
    done = list(
        reg.register_many(
            [files["broken"], files["moving"]],
            files["fixed"],
            QUICK,
            max_folding_share=1.0,
            device="cpu",
        )
    )
    assert len(prepared) == 1 and len(done) == 2
    assert [record["status"] for _, record in done] == ["failed", "ok"]
    assert done[0][0] is None and "broken.nii.gz" in done[0][1]["reasons"][0]
    alone, record = register_files(
        files["moving"], files["fixed"], QUICK, max_folding_share=1.0, device="cpu"
    )
    registration, many = done[1]
    for stage in ("before", "affine", "deformable"):
        assert many[stage]["ncc"] == pytest.approx(record[stage]["ncc"], rel=1e-6)
    assert many["deformable"]["ncc"] > many["before"]["ncc"]
    assert registration.device == torch.device("cpu")


def test_register_many_raises_for_an_unreadable_atlas_before_any_participant(files):
    with pytest.raises(Exception, match="broken.nii.gz"):
        reg.register_many([files["moving"]], files["broken"], QUICK, max_folding_share=1.0)
    # One participant's job keeps its old contract: a failed record.
    registration, record = register_files(
        files["moving"], files["broken"], QUICK, max_folding_share=1.0
    )
    assert registration is None and record["status"] == "failed"


@pytest.mark.parametrize("device", DEVICES)
def test_a_transform_fitted_on_a_device_is_saved_on_the_cpu_and_warps_anywhere(
    tmp_path, files, pair, device
):
    ((registration, record),) = reg.register_many(
        [files["moving"]], files["fixed"], QUICK, max_folding_share=1.0, device=device
    )
    assert registration.device.type == device
    on_device = registration.warp(pair["moving"])
    save_outcome(registration, record, tmp_path / "t.pt", tmp_path / "t.json")
    state = torch.load(tmp_path / "t.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in state["affine"].values())
    assert state["svffd"]["params"].device.type == "cpu"
    loaded = load_outcome(tmp_path / "t.pt")
    assert loaded.device == torch.device("cpu")
    np.testing.assert_allclose(
        loaded.warp(pair["moving"]).get_fdata(), on_device.get_fdata(), atol=1e-4
    )
    # warp(device=...) moves the loaded transform there, as the warp rule on a GPU node would
    moved = loaded.warp(pair["moving"], device=device)
    assert loaded.device.type == device
    np.testing.assert_allclose(moved.get_fdata(), on_device.get_fdata(), atol=1e-4)
    # An affine-only transform on the device (no buffers to tell where it is) still displaces.
    affine_only = Registration(
        registration.fixed_grid, registration.moving_grid, loaded.affine, None, QUICK
    )
    assert affine_only.displacement_mm().shape == pair["fixed"].shape[::-1] + (3,)


def test_batch_registration_prepares_the_atlas_once_per_job(files, tmp_path, monkeypatch):
    """The register batch rule's work (explain.registration_jobs): participants in turn in one
    process share the prepared atlas; each gets its transform and record."""
    from ageatlas.explain import registration_jobs

    registration_jobs._prepared_atlas.cache_clear()
    prepared = []
    real = reg.prepare_fixed
    monkeypatch.setattr(reg, "prepare_fixed", lambda *a, **k: prepared.append(1) or real(*a, **k))
    section = {
        "affine_iterations": 10,
        "levels": 2,
        "finest_level": 0,
        "max_steps": 4,
        "max_folding_share": 1.0,
    }
    statuses = []
    for eid, moving in (("1", files["moving"]), ("2", files["broken"])):
        info = registration_jobs.register_to_atlas(
            eid=eid,
            group="F_healthy",
            images=[str(moving)],
            atlas=[str(files["fixed"])],
            transform_out=str(tmp_path / f"{eid}.pt"),
            record_out=str(tmp_path / f"{eid}.json"),
            section=section,
            built_atlas=False,
        )
        statuses.append(info["status"])
    assert len(prepared) == 1
    assert statuses == ["ok", "failed"]  # a broken image is a failed record, not an exception
    assert (tmp_path / "1.pt").exists() and (tmp_path / "2.json").exists()


def _two_contrasts(points: np.ndarray, organ_shift_mm) -> tuple:
    """Water: the body alone, uniform inside; fat: an inner organ alone (it cannot be seen in
    water), shifted within the body by ``organ_shift_mm``; and the organ's mask."""
    body = ((points / np.array([22.0, 20.0, 45.0])) ** 2).sum(-1)
    centre = np.array([6.0, -4.0, 10.0]) + np.asarray(organ_shift_mm)
    organ = (((points - centre) / np.array([8.0, 7.0, 14.0])) ** 2).sum(-1)
    water = 1 / (1 + np.exp((body - 1) * 8))
    fat = 1 / (1 + np.exp((organ - 1) * 6))
    return water.astype(np.float32), fat.astype(np.float32), (organ < 1).astype(np.int16)


def test_a_second_channel_aligns_what_the_first_cannot_see():
    """An organ that moved inside the body is visible only in the fat image: registering water
    alone leaves it where it was, water + fat brings it onto the fixed organ."""
    affine = _affine([35.0, -30.0, -70.0])
    points = _world(affine)
    fixed = [nib.Nifti1Image(a, affine) for a in _two_contrasts(points, (0, 0, 0))[:2]]
    *moving, organ = _two_contrasts(points, (0.0, 0.0, 12.0))
    moving = [nib.Nifti1Image(a * 300.0, affine) for a in moving]
    fixed_organ = _two_contrasts(points, (0, 0, 0))[2] > 0
    settings = RegistrationSettings(
        affine_iterations=0, levels=2, deformable_lr=1e-2, max_steps=15, bending_weight=0.001
    )
    dice = {}
    for name, channels in (("water", slice(0, 1)), ("water+fat", slice(0, 2))):
        result = register(moving[channels], fixed[channels], settings)
        warped = np.asanyarray(result.warp(nib.Nifti1Image(organ, affine), order=0).dataobj)
        dice[name] = (
            2
            * (warped.astype(bool) & fixed_organ).sum()
            / (warped.astype(bool).sum() + fixed_organ.sum())
        )
    assert dice["water+fat"] > dice["water"] + 0.1, dice


def test_channels_must_match_and_share_a_grid(pair):
    with pytest.raises(ValueError, match="2 channel"):
        register([pair["moving"], pair["moving"]], pair["fixed"], FAST)
    with pytest.raises(ValueError, match="not on one grid"):
        register([pair["moving"], pair["fixed"]], [pair["fixed"], pair["fixed"]], FAST)
    with pytest.raises(ValueError, match="distinct contrasts"):
        RegistrationSettings(channels=("W", "W"))
    with pytest.raises(ValueError, match="distinct contrasts"):
        RegistrationSettings(channels=("water",))


_BENDING_GRADIENT = """
import hashlib, sys, torch
from ageatlas.explain.register import bending_energy
torch.manual_seed(0)
params = (0.01 * torch.randn(1, 3, 9, 7, 11)).requires_grad_()
bending_energy(params).backward()
sys.stdout.write(hashlib.sha256(params.grad.numpy().tobytes()).hexdigest())
"""


def test_bending_energy_is_deepalis_with_a_gradient_that_does_not_change_between_processes():
    """deepali builds the bending terms in a set's order, which follows Python's hash seed: the
    gradient's rounding, and with it every registration, changed from one process to the next
    (a rerun of the demo gave other atlases). Ours has deepali's value and one gradient."""
    from deepali.losses import BSplineBending

    torch.manual_seed(1)
    params = 0.01 * torch.randn(1, 3, 9, 7, 11)
    torch.testing.assert_close(reg.bending_energy(params), BSplineBending(stride=1)(params))
    digests = set()
    for seed in ("0", "1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", _BENDING_GRADIENT], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        digests.add(run.stdout)
    assert len(digests) == 1
