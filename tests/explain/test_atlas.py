"""Tests for ageatlas.explain.atlas: reference and member choice, template update."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ageatlas.cohort.selection import choose_members, choose_reference
from ageatlas.explain.atlas import initial_template, update_template, warped_member
from ageatlas.explain.register import register
from ageatlas.explain.registration_settings import RegistrationSettings

SHAPE = (24, 24, 32)
SPACING = (4.0, 4.0, 4.0)
FAST = RegistrationSettings(
    affine_iterations=60, affine_lr=0.05, levels=2, deformable_lr=1e-2, max_steps=15
)


def _affine(origin=(-48.0, -48.0, -64.0)):
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = origin
    return affine


def _blob(centre_mm, radii_mm=(22.0, 18.0, 40.0)) -> nib.Nifti1Image:
    affine = _affine()
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
    points = ijk @ affine[:3, :3].T + affine[:3, 3]
    r2 = (((points - np.array(centre_mm)) / np.array(radii_mm)) ** 2).sum(-1)
    return nib.Nifti1Image((1000 / (1 + np.exp((r2 - 1) * 6))).astype(np.float32), affine)


def test_reference_is_nearest_median_age_and_bmi():
    members = pd.DataFrame(
        {
            "eid": ["5", "3", "9", "7"],
            "age": [50.0, 60.0, 61.0, 80.0],
            "bmi": [22.0, 24.0, 23.0, 19.0],
        }
    )
    # Median age 60.5, median BMI 22.5: eids 3 and 9 are close; 9 is closer in BMI.
    assert choose_reference(members) == 9


def test_reference_ties_go_to_smallest_eid_and_empty_group_raises():
    members = pd.DataFrame({"eid": ["8", "4"], "age": [60.0, 60.0], "bmi": [25.0, 25.0]})
    assert choose_reference(members) == 4
    with pytest.raises(ValueError, match="empty"):
        choose_reference(members.iloc[:0])


def test_members_spread_over_age_range():
    table = pd.DataFrame({"eid": [str(i) for i in range(10)], "age": np.linspace(45, 80, 10)[::-1]})
    picked = choose_members(table, 3)
    ages = table.set_index("eid").loc[[str(e) for e in picked], "age"]
    assert len(picked) == 3 and ages.min() == 45 and ages.max() == 80
    assert choose_members(table, 0) == list(range(10))
    assert choose_members(table, 50) == list(range(10))


def test_initial_template_is_normalised_on_reference_grid():
    image = _blob((0, 0, 0))
    template = initial_template(image, clip=0.6)
    data = np.asarray(template.dataobj)
    assert template.shape == SHAPE and np.allclose(template.affine, image.affine)
    assert data.min() == 0 and data.max() == pytest.approx(1.0)


def test_template_moves_to_members_mean_position():
    """Members shifted by +8 and +16 mm from the reference: the unbiased template sits near +12
    mm."""
    reference = _blob((0, 0, 0))
    template = initial_template(reference, clip=1.0)
    members = {}
    for eid, shift in ((1, 8.0), (2, 16.0)):
        image = _blob((0, 0, shift))
        registration = register(image, template, FAST, fixed_normalised=True)
        members[eid] = (registration, warped_member(registration, image, clip=1.0))
    update = update_template(template, members, {3: "folding"})
    assert update.n_members == 2 and update.excluded == {3: "folding"}
    assert update.mean_displacement_mm == pytest.approx(12.0, abs=3.0)
    profile = np.asarray(update.template.dataobj).sum(axis=(0, 1))
    centre_mm = (profile * np.arange(SHAPE[2])).sum() / profile.sum() * SPACING[2] + _affine()[2, 3]
    assert centre_mm == pytest.approx(12.0, abs=3.0)


def test_update_needs_a_member():
    template = initial_template(_blob((0, 0, 0)), clip=0.6)
    with pytest.raises(ValueError, match="no member"):
        update_template(template, {})


def _centre_mm(image: nib.Nifti1Image) -> float:
    profile = np.asarray(image.dataobj).sum(axis=(0, 1))
    return (profile * np.arange(SHAPE[2])).sum() / profile.sum() * SPACING[2] + _affine()[2, 3]


def test_a_two_channel_template_moves_both_channels_to_the_members_mean_position():
    """Water and fat registered together: one transform per member, and each channel's template
    is moved by it (to +12 mm for members at +8 and +16 mm)."""

    def contrasts(shift):
        return [_blob((0, 0, shift)), _blob((4.0, 0, shift - 10.0), (8.0, 8.0, 12.0))]

    template = [initial_template(image, clip=1.0) for image in contrasts(0.0)]
    members = {}
    for eid, shift in ((1, 8.0), (2, 16.0)):
        images = contrasts(shift)
        registration = register(images, template, FAST, fixed_normalised=True)
        warped = [warped_member(registration, image, clip=1.0) for image in images]
        members[eid] = (registration, warped)
    update = update_template(template, members)
    assert len(update.templates) == 2 and update.template is update.templates[0]
    assert _centre_mm(update.templates[0]) == pytest.approx(12.0, abs=3.0)
    assert _centre_mm(update.templates[1]) == pytest.approx(2.0, abs=3.0)
    with pytest.raises(ValueError, match="1 channel"):
        update_template(template, {1: (members[1][0], members[1][1][0])})
