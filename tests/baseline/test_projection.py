"""2.5D projections: a phantom's block lands where it is in the world, in every storage order; bed
cut; files."""

from __future__ import annotations

import numpy as np
import pytest

from ageatlas.baseline.projection import (
    ProjectionOptions,
    load_projection,
    project_participant,
    project_volumes,
    save_projection,
    view_widths,
)
from ageatlas.core.files import nifti_image, save_nifti
from ageatlas.core.paths import stitched_path

SHAPE = (20, 16, 30)  # RAS voxels: left->right, posterior->anterior, inferior->superior
SPACING = (2.0, 2.5, 3.0)
RAS_AFFINE = np.diag([*SPACING, 1.0])
RAS_AFFINE[:3, 3] = (-20.0, -20.0, -45.0)
BED = 3  # posterior voxels holding the "bed"
SIZE = (64, 64)
OPTIONS = ProjectionOptions(bed_voxels=BED, size=SIZE)
# Water: bright block right, anterior, superior. Fat: left, posterior (in front of the bed),
# inferior.
WATER_BLOCK = (slice(14, 18), slice(11, 15), slice(22, 27))
FAT_BLOCK = (slice(2, 6), slice(4, 7), slice(3, 8))


def phantom(bed: bool = True) -> tuple[np.ndarray, np.ndarray]:
    water = np.ones(SHAPE, np.float32)  # a dim body everywhere
    fat = np.ones(SHAPE, np.float32)
    water[WATER_BLOCK] = 50
    fat[FAT_BLOCK] = 50
    if bed:
        water[:, :BED] = fat[:, :BED] = 200  # would dominate both views if it stayed
    return water, fat


def block_world_centre(block) -> np.ndarray:
    centre = [(s.start + s.stop - 1) / 2 for s in block]
    return (RAS_AFFINE @ np.append(centre, 1))[:3]


def stored_as(volume: np.ndarray, order, flips) -> tuple[np.ndarray, np.ndarray]:
    """The RAS volume stored with its axes in `order` (a permutation), then flipped where
    `flips` says, with the affine that keeps every voxel at its world position."""
    stored = np.transpose(volume, order)
    index_map = np.zeros((4, 4))  # stored voxel index -> RAS voxel index
    index_map[3, 3] = 1
    for new_axis, old_axis in enumerate(order):
        index_map[old_axis, new_axis] = 1
    for axis, flip in enumerate(flips):
        if flip:
            stored = np.flip(stored, axis)
            unflip = np.eye(4)
            unflip[axis, axis], unflip[axis, 3] = -1, stored.shape[axis] - 1
            index_map = index_map @ unflip
    return np.ascontiguousarray(stored), RAS_AFFINE @ index_map


STORAGES = {
    "RAS": ((0, 1, 2), (False, False, False)),
    "LPS": ((0, 1, 2), (True, True, False)),
    "LPI": ((0, 1, 2), (True, True, True)),
    "permuted SLA": ((2, 0, 1), (True, True, False)),
}


def expected_pixel(world, view: str, widths) -> tuple[float, float]:
    """(row, column) where a world point must appear: fractions of the field of view from the
    top and from the image-left edge (patient's right in the coronal view, anterior in the
    sagittal view)."""
    low = RAS_AFFINE[:3, 3] - np.array(SPACING) / 2  # outer voxel edges
    high = low + np.array(SHAPE) * SPACING
    low[1] += BED * SPACING[1]  # the bed is gone from the posterior side
    row = (high[2] - world[2]) / (high[2] - low[2]) * SIZE[0] - 0.5
    if view == "coronal":
        return row, (high[0] - world[0]) / (high[0] - low[0]) * widths[0] - 0.5
    return row, widths[0] + (high[1] - world[1]) / (high[1] - low[1]) * widths[1] - 0.5


def bright_centre(plane: np.ndarray, columns: slice) -> np.ndarray:
    part = plane[:, columns]
    rows, cols = np.nonzero(part > 0.5 * part.max())
    return np.array([rows.mean(), cols.mean() + (columns.start or 0)])


@pytest.mark.parametrize("storage", STORAGES)
def test_block_appears_where_it_is_in_both_views(storage):
    order, flips = STORAGES[storage]
    (water, affine), (fat, _) = (stored_as(v, order, flips) for v in phantom())
    # The test's own construction: the stored block is still at its world position.
    voxels = np.argwhere(water == 50).mean(0)
    assert np.allclose((affine @ np.append(voxels, 1))[:3], block_world_centre(WATER_BLOCK))

    image = project_volumes(water, fat, affine, OPTIONS)
    assert image.shape == (2, *SIZE) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 1
    widths = view_widths(SHAPE[0], SHAPE[1] - BED, SIZE[1])
    for channel, block in ((0, WATER_BLOCK), (1, FAT_BLOCK)):
        world = block_world_centre(block)
        for view, columns in (
            ("coronal", slice(0, widths[0])),
            ("sagittal", slice(widths[0], SIZE[1])),
        ):
            found = bright_centre(image[channel], columns)
            assert np.allclose(found, expected_pixel(world, view, widths), atol=1.0), (
                channel,
                view,
            )
    # Water block: head end (top), patient's right (left of coronal), anterior (left of sagittal).
    row, col = bright_centre(image[0], slice(0, widths[0]))
    assert row < SIZE[0] / 3 and col < widths[0] / 2
    assert bright_centre(image[0], slice(widths[0], SIZE[1]))[1] < widths[0] + widths[1] / 2


def test_every_storage_gives_the_same_image():
    reference = project_volumes(*phantom(), RAS_AFFINE, OPTIONS)
    for order, flips in STORAGES.values():
        (water, affine), (fat, _) = (stored_as(v, order, flips) for v in phantom())
        assert np.allclose(project_volumes(water, fat, affine, OPTIONS), reference, atol=1e-6)


@pytest.mark.parametrize("storage", ["RAS", "LPS"])
def test_bed_is_cut_on_the_posterior_side(storage):
    order, flips = STORAGES[storage]

    def project(bed, options):
        (water, affine), (fat, _) = (stored_as(v, order, flips) for v in phantom(bed))
        return project_volumes(water, fat, affine, options)

    without_bed = project(False, OPTIONS)
    assert np.array_equal(project(True, OPTIONS), without_bed)
    in_mm = ProjectionOptions(bed_mm=BED * SPACING[1], size=SIZE)
    assert np.array_equal(project(True, in_mm), without_bed)
    assert not np.allclose(
        project(True, ProjectionOptions(bed_voxels=0, size=SIZE)), without_bed, atol=0.1
    )


def test_views_share_width_by_voxels_across_and_default_size():
    assert view_widths(224, 152, 256) == (153, 103)
    assert view_widths(1, 1000, 256) == (1, 255)
    image = project_volumes(*phantom(), RAS_AFFINE, ProjectionOptions(bed_voxels=BED))
    assert image.shape == (2, 256, 256)


def test_rejects_mismatched_volumes_and_a_bed_that_eats_the_body():
    water, fat = phantom()
    with pytest.raises(ValueError, match="shape"):
        project_volumes(water, fat[:-1], RAS_AFFINE, OPTIONS)
    with pytest.raises(ValueError, match="bed"):
        project_volumes(water, fat, RAS_AFFINE, ProjectionOptions(bed_voxels=SHAPE[1], size=SIZE))
    with pytest.raises(ValueError, match="bed_mm"):
        project_volumes(water, fat, RAS_AFFINE, ProjectionOptions(bed_mm=-1, size=SIZE))


def test_constant_view_is_zeros():
    water, fat = phantom(bed=False)
    image = project_volumes(water, np.zeros_like(fat), RAS_AFFINE, OPTIONS)
    assert np.array_equal(image[1], np.zeros(SIZE, np.float32))


def test_participant_from_stitched_int16_niftis(tmp_path):
    """As the stitch job stores them: RAS, scaled int16, in the participant's folder."""
    water, fat = phantom()
    folder = tmp_path / "stitched" / "1000001"
    folder.mkdir(parents=True)
    for name, volume in (
        ("W", water * 7.3),
        ("F", fat * 3.1),
    ):  # scaling must not matter after min-max
        save_nifti(
            stitched_path(folder, "1000001", name), nifti_image(volume, RAS_AFFINE, dtype=np.int16)
        )
    out, preview = (
        tmp_path / "projections" / "1000001.npy",
        tmp_path / "projections" / "1000001.png",
    )
    info = project_participant(folder, "1000001", out, preview, OPTIONS)
    assert info["shape"] == [2, *SIZE] and info["bed_voxels"] == BED
    saved = np.load(out)
    assert saved.dtype == np.float16
    assert np.allclose(saved, project_volumes(water, fat, RAS_AFFINE, OPTIONS), atol=2e-3)
    assert preview.stat().st_size > 0
    assert not list(out.parent.glob(".*.tmp"))


def test_save_and_load(tmp_path):
    image = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    save_projection(tmp_path / "a.npy", image, "float32")
    assert np.array_equal(load_projection(tmp_path / "a.npy"), image)
    with pytest.raises(ValueError, match="dtype"):
        save_projection(tmp_path / "b.npy", image, "uint8")
    np.save(tmp_path / "c.npy", image[0])
    with pytest.raises(ValueError, match="shape"):
        load_projection(tmp_path / "c.npy")
