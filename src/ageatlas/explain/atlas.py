"""Sex x BMI group atlases built with deepali, as in Starck et al. 2023.

One group's atlas is built in iterations. Iteration 0's template is the water
image of one reference participant, normalised with the registration recipe
(min-max, clip, min-max). In each iteration every atlas member is registered
to the current template (affine, then SVFFD: :mod:`ageatlas.explain.register`); the
next template is the mean of the warped member images, warped with the
negated mean displacement so that it sits at the members' mean shape rather
than at the reference's (docs/sources.md, "The authors' method"). Members whose
registration failed QC are left out of the means and listed.

The workflow runs one job per member registration and one per template
update, so a cluster registers a group's members in parallel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import torch

from ageatlas.core.files import nifti_image
from ageatlas.explain.register import (
    Channels,
    Registration,
    channels_of,
    grid_from_nifti,
    normalise_for_registration,
)

log = logging.getLogger(__name__)


def initial_template(reference_water: nib.Nifti1Image, clip: float) -> nib.Nifti1Image:
    """Iteration-0 template: the reference water image, normalised to [0, 1]."""
    data = normalise_for_registration(np.asanyarray(reference_water.dataobj), clip)
    return nifti_image(data, reference_water.affine, "ageatlas template iter0")


def warped_member(
    registration: Registration, water: nib.Nifti1Image, clip: float
) -> nib.Nifti1Image:
    """A member's normalised water image resampled into template space."""
    data = normalise_for_registration(np.asanyarray(water.dataobj), clip)
    return registration.warp(nib.Nifti1Image(data, water.affine), order=1)


@dataclass
class TemplateUpdate:
    """The next template (one image per registration channel) and what went into it."""

    templates: list[nib.Nifti1Image]
    n_members: int
    mean_displacement_mm: float  # mean |mean displacement| over the template's voxels
    excluded: dict[int, str] = field(default_factory=dict)

    @property
    def template(self) -> nib.Nifti1Image:
        """The first channel's (water's) template."""
        return self.templates[0]


def update_template(
    template: Channels,
    members: dict[int, tuple[Registration, Channels]],
    excluded: dict[int, str] | None = None,
    description: str = "ageatlas template",
) -> TemplateUpdate:
    """Mean of the warped members, moved to their mean shape, per channel.

    ``members`` maps eid to (registration to ``template``, warped image(s) on
    the template grid, as many as the template has channels). Streams one
    member at a time. With displacement d from template to member, the
    members' mean shape puts the anatomy of template point x at x + mean(d)(x);
    the new template T'(y) = M(y - d(y)) is the first-order inverse of that map.
    """
    if not members:
        raise ValueError("no member registration passed QC; cannot update the template")
    channels = channels_of(template)
    mean_images = [np.zeros(channels[0].shape[:3], dtype=np.float64) for _ in channels]
    mean_disp = None
    for registration, warped in members.values():
        warped = channels_of(warped)
        if len(warped) != len(channels):
            raise ValueError(f"a member has {len(warped)} channel(s), the template {len(channels)}")
        for mean_image, image in zip(mean_images, warped):
            _check_on_grid(image, channels[0])
            mean_image += np.asarray(image.get_fdata(), dtype=np.float64)
        disp = registration.displacement_mm()
        mean_disp = disp.astype(np.float64) if mean_disp is None else mean_disp + disp
    mean_disp /= len(members)
    magnitude = float(np.linalg.norm(mean_disp, axis=-1).mean())
    log.info("template update: %d members, mean |displacement| %.2f mm", len(members), magnitude)
    templates = [
        nifti_image(
            _shift(mean_image / len(members), channels[0], -mean_disp),
            channels[0].affine,
            description,
        )
        for mean_image in mean_images
    ]
    return TemplateUpdate(templates, len(members), magnitude, dict(excluded or {}))


def _check_on_grid(image: nib.Nifti1Image, template: nib.Nifti1Image) -> None:
    if image.shape[:3] != template.shape[:3] or not np.allclose(
        image.affine, template.affine, atol=1e-3
    ):
        raise ValueError("a warped member image is not on the template's grid")


def _shift(data: np.ndarray, reference: nib.Nifti1Image, shift_mm: np.ndarray) -> np.ndarray:
    """Sample ``data`` (on ``reference``'s grid) at every voxel's world point + shift.

    ``shift_mm`` is (Z, Y, X, 3) in LPS mm, as from
    :meth:`Registration.displacement_mm`. Outside the grid reads 0.
    """
    grid = grid_from_nifti(reference.affine, reference.shape)
    cube = grid.coords(align_corners=True)
    world = grid.cube_to_world(cube) + torch.from_numpy(shift_mm).to(cube.dtype)
    sample_at = grid.world_to_cube(world).unsqueeze(0)
    volume = torch.from_numpy(np.ascontiguousarray(data.T, dtype=np.float32))[None, None]
    out = torch.nn.functional.grid_sample(
        volume,
        sample_at.to(volume.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )
    return out[0, 0].numpy().T
