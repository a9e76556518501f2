"""Tests for ageatlas.explain.truth: Dice, leave-one-out consensus, enrichment."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ageatlas.explain.truth import dice, enrichment, labels_on, leave_one_out_dice, majority_labels


def test_dice_values():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    a[:2] = True
    b[1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    assert np.isnan(dice(np.zeros(3, bool), np.zeros(3, bool)))


def test_leave_one_out_flags_the_misaligned_participant():
    base = np.zeros((10, 10), np.uint8)
    base[2:6, 2:6] = 1
    shifted = np.roll(base, 4, axis=0)
    scores = leave_one_out_dice([base, base, base, shifted], [1])
    assert scores[:3, 0] == pytest.approx([1.0, 1.0, 1.0])
    assert scores[3, 0] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        leave_one_out_dice([base], [1])


def test_majority_labels():
    a, b, c = (np.full((2, 2), v, np.uint8) for v in (1, 1, 2))
    assert (majority_labels([a, b, c], 3) == 1).all()


def test_enrichment_is_one_for_flat_and_above_for_focused_maps():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:9, 1:9, 1:9] = 1
    labels[4:6, 4:6, 4:6] = 7
    flat = np.ones(labels.shape)
    assert enrichment(flat, labels, [7]) == pytest.approx(1.0)
    focused = np.where(labels == 7, 1.0, 0.1)
    assert enrichment(focused, labels, [7]) > 5
    # importance outside the body does not count
    assert enrichment(np.where(labels == 0, 100.0, 1.0), labels, [7]) == pytest.approx(1.0)


def test_labels_on_resamples_by_world_position():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[5, 5, 5] = 3
    src = nib.Nifti1Image(labels, np.diag([2.0, 2.0, 2.0, 1.0]))
    ref_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    out = labels_on(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), ref_affine), src)
    hits = np.argwhere(np.asarray(out.dataobj) == 3)
    # the 2 mm voxel centred at 10 mm covers the 1 mm voxels at 9-11 mm
    assert out.shape == (20, 20, 20) and len(hits) > 0 and (np.abs(hits - 10) <= 1).all()


def test_enrichment_counts_signed_maps_by_magnitude_and_skips_nan():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:9, 1:9, 1:9] = 1
    labels[4:6, 4:6, 4:6] = 7
    signed = np.where(labels == 7, -1.0, 0.1)
    assert enrichment(signed, labels, [7]) == pytest.approx(enrichment(np.abs(signed), labels, [7]))
    uncovered = np.where(labels == 7, 1.0, np.nan)
    assert np.isfinite(enrichment(uncovered, labels, [7]))


def test_resolution_ceiling_is_the_mask_at_input_resolution_and_lower_for_coarse_cells():
    from ageatlas.explain.cells import CellGeometry
    from ageatlas.explain.truth import resolution_ceiling

    labels = np.zeros((32, 32, 32), np.uint8)
    labels[2:30, 2:30, 2:30] = 1
    labels[12:16, 12:16, 12:16] = 7
    mask = (labels == 7).astype(np.float32)
    identity = resolution_ceiling(mask, 1, CellGeometry.identity(3), mask.shape)
    assert np.array_equal(identity, mask)
    coarse = resolution_ceiling(mask, 2, CellGeometry((4.0, 4.0, 4.0), (0.0,) * 3), (4, 4, 4))
    exact, blurred = enrichment(mask, labels, [7]), enrichment(coarse, labels, [7])
    assert coarse.shape == mask.shape and 1 < blurred < exact


def test_labels_reach_atlas_space_sampled_once_from_their_own_grid():
    """An identity registration must give every stage what no registration gives.

    The truth labels are finer than the participant's image; resampling them
    to the image grid first and then through the transform (twice by nearest
    neighbour) thickens or loses thin structures and favours "none".
    """
    from deepali import spatial

    from ageatlas.explain.register import Registration, RegistrationSettings, grid_from_nifti
    from ageatlas.explain.truth import labels_in_atlas

    atlas = nib.Nifti1Image(np.zeros((12, 12, 12), np.float32), np.diag([4.0, 4.0, 4.0, 1.0]))
    moving_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    moving_affine[:3, 3] = 2.0  # the participant's grid is half a voxel off the atlas'
    fine = np.zeros((48, 48, 48), np.uint8)
    fine[8:40, 8:40, 8:40] = 1
    fine[8:40, 8:40, 23:25] = 2  # a 2 mm slab: on an atlas voxel centre, between the image's
    labels = nib.Nifti1Image(fine, np.diag([1.0, 1.0, 1.0, 1.0]))
    fixed_grid = grid_from_nifti(atlas.affine, atlas.shape)
    identity = Registration(
        fixed_grid,
        grid_from_nifti(moving_affine, (12, 12, 12)),
        spatial.AffineTransform(fixed_grid),
        None,
        RegistrationSettings(),
    )
    stages = labels_in_atlas(identity, labels, atlas)
    assert (stages["none"] == 2).any()
    assert np.array_equal(stages["affine"], stages["none"])
    assert np.array_equal(stages["deformable"], stages["none"])


AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])


def _body_with_age_region() -> np.ndarray:
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[2:10, 2:10, 2:10] = 1  # body
    labels[4:6, 4:8, 4:8] = 2  # the age region
    return labels


def _identically_registered(labels: np.ndarray, cam: np.ndarray, n: int = 3):
    """``n`` participants registered to the atlas by the identity, each with ``cam`` as map."""
    from deepali import spatial

    from ageatlas.explain.register import Registration, RegistrationSettings, grid_from_nifti

    grid = grid_from_nifti(AFFINE, labels.shape)
    for eid in range(n):
        identity = Registration(
            grid, grid, spatial.AffineTransform(grid), None, RegistrationSettings()
        )
        yield eid, identity, nib.Nifti1Image(labels, AFFINE), nib.Nifti1Image(cam, AFFINE)


def test_group_check_scores_the_per_year_maps_beside_the_mean():
    """The population maps are scored against the same consensus and ceiling."""
    from ageatlas.explain.truth import group_check

    affine, labels = AFFINE, _body_with_age_region()
    shape = labels.shape

    flat = nib.Nifti1Image((labels > 0).astype(np.float32), affine)
    focused = nib.Nifti1Image((labels == 2).astype(np.float32), affine)
    result = group_check(
        _identically_registered(labels, (labels > 0).astype(np.float32)),
        nib.Nifti1Image(np.zeros(shape, np.float32), affine),
        flat,
        age_labels=[2],
        n_labels=3,
        ceiling=lambda mask: mask,
        per_year=focused,
        per_year_of_age=flat,
    )
    volume_share = (labels == 2).sum() / (labels > 0).sum()
    assert result["atlas_share_of_ceiling_per_year_of_age"] == pytest.approx(volume_share)
    assert result["atlas_enrichment"] == pytest.approx(1.0)
    assert result["atlas_enrichment_per_year"] == pytest.approx(1 / volume_share)
    assert result["atlas_share_of_ceiling_per_year"] == pytest.approx(1.0)
    assert result["atlas_share_of_ceiling"] == pytest.approx(volume_share)


def test_group_check_smooths_the_ceiling_as_the_population_maps_were_smoothed():
    """A smoothed population map is scored against the mask smoothed alike, not the sharp one."""
    from ageatlas.explain.maps import smooth
    from ageatlas.explain.truth import group_check

    affine, labels = AFFINE, _body_with_age_region()
    shape = labels.shape
    mask = (labels == 2).astype(np.float32)

    def check(fwhm):
        population = nib.Nifti1Image(smooth(mask.astype(float), affine, fwhm), affine)
        return group_check(
            _identically_registered(labels, mask),
            nib.Nifti1Image(np.zeros(shape, np.float32), affine),
            population,
            age_labels=[2],
            n_labels=3,
            ceiling=lambda m: m,
            fwhm_mm=fwhm,
        )

    sharp, smoothed = check(None), check(8.0)
    assert sharp["atlas_share_of_ceiling"] == pytest.approx(1.0)
    # The smoothed map of the mask is the best a map smoothed by 8 mm can do.
    assert smoothed["atlas_share_of_ceiling"] == pytest.approx(1.0, abs=1e-4)
    assert smoothed["atlas_ceiling"] < 0.8 * sharp["atlas_ceiling"]
