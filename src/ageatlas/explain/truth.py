"""Checks against the SYNTHETIC cohort's truth label maps.

The synthetic phantom (:mod:`ageatlas.synthetic.phantom`) knows where age was planted
(``AGE_REGIONS``) and where every tissue is. Two questions get numbers here:

- Does registration align anatomy? Each participant's labels are taken into
  atlas space three ways (no registration: world coordinates only; affine;
  affine + deformable), and compared by Dice with the consensus of the other
  participants of the group (leave-one-out majority vote).
- Does the population importance map look where age is? The share of
  importance (|map|: signed maps count by magnitude) inside the age regions
  divided by their share of the body volume: 1 means no preference, above 1
  means enrichment.
- The same for the population maps of the signed maps' slope on the predicted
  age (``per_year``, :func:`ageatlas.explain.maps.mean_map`), where evidence
  that does not rise with the prediction cancels, and on the chronological
  age (``per_year_of_age``), where evidence that does not follow age cancels.
- How far could it go? The ceiling: the planted age mask brought to the
  model's input grid, pooled to the layer's cells and placed back exactly as
  the maps are (:func:`resolution_ceiling`), then scored the same way. The
  gap between a map's enrichment and its ceiling is the method's; the gap
  between the ceiling and the mask's own enrichment is the layer's resolution.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

from ageatlas.explain.maps import smooth
from ageatlas.explain.register import Registration, grid_from_nifti

STAGES = ("none", "affine", "deformable")


def labels_on(reference: nib.Nifti1Image, labels: nib.Nifti1Image) -> nib.Nifti1Image:
    """A label map resampled (nearest neighbour) onto ``reference``'s grid."""
    out = resample_from_to(labels, (reference.shape[:3], reference.affine), order=0, cval=0)
    return nib.Nifti1Image(np.asarray(out.dataobj).astype(np.uint8), reference.affine)


def labels_in_atlas(
    registration: Registration, labels: nib.Nifti1Image, atlas: nib.Nifti1Image
) -> dict[str, np.ndarray]:
    """Truth labels in atlas space after each stage, each sampled once (nearest neighbour).

    The labels may be on any grid (the SYNTHETIC truth is finer than the
    participant's image): the transform maps atlas voxels through world space,
    so it samples them on their own grid. Resampling them to the image grid
    first would sample twice, thicken or lose structures thinner than a voxel
    and favour "none", which samples once.
    """
    own_grid = grid_from_nifti(labels.affine, labels.shape[:3])

    def stage(svffd):
        warp = Registration(
            registration.fixed_grid, own_grid, registration.affine, svffd, registration.settings
        )
        return np.asarray(warp.warp(labels, order=0).dataobj)

    return {
        "none": np.asarray(labels_on(atlas, labels).dataobj),
        "affine": stage(None),
        "deformable": stage(registration.svffd),
    }


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else float("nan")


def leave_one_out_dice(maps: list[np.ndarray], labels) -> np.ndarray:
    """Dice per participant (rows) and label (columns) with the others' majority vote.

    A voxel belongs to a label in the consensus when more than half of the
    other participants have that label there. Needs at least 2 maps.
    """
    if len(maps) < 2:
        raise ValueError("leave-one-out Dice needs at least 2 participants")
    counts = {label: sum((m == label).astype(np.int32) for m in maps) for label in labels}
    others = len(maps) - 1
    out = np.empty((len(maps), len(labels)))
    for i, m in enumerate(maps):
        for j, label in enumerate(labels):
            own = m == label
            consensus = (counts[label] - own) * 2 > others
            out[i, j] = dice(own, consensus)
    return out


def majority_labels(maps: list[np.ndarray], n_labels: int) -> np.ndarray:
    """Voxel-wise most frequent label (ties to the lower value)."""
    counts = np.stack(
        [sum((m == label).astype(np.int32) for m in maps) for label in range(n_labels)]
    )
    return counts.argmax(axis=0).astype(np.uint8)


def enrichment(importance: np.ndarray, labels: np.ndarray, age_labels) -> float:
    """(Importance share in the age regions) / (their share of the body volume).

    Importance is the magnitude |map| (NaN voxels, outside a field of view,
    left out). Body = every non-background voxel; importance outside the
    body is ignored, so a map that is flat over the body gives 1.
    """
    importance = np.abs(np.asarray(importance, dtype=np.float64))
    body = labels > 0
    age = np.isin(labels, list(age_labels)) & body
    total = float(np.nansum(importance[body]))
    if total <= 0 or not age.any():
        return float("nan")
    return (float(np.nansum(importance[age])) / total) / (age.sum() / body.sum())


def resolution_ceiling(mask: np.ndarray, factor: int, geometry, cells_shape) -> np.ndarray:
    """The best map a layer can draw of ``mask`` (on the stitched grid), back on the stitched grid.

    The mask is block-averaged to the model input by ``factor`` (as the cache
    is), pooled to the layer's cells (:func:`cells.pool_to_cells`) and placed
    back with the maps' own placement and resampling.
    """
    import torch

    from ageatlas.age.preprocess import downsample
    from ageatlas.explain.cells import place_cells, pool_to_cells
    from ageatlas.explain.gradcam import to_stitched_grid

    model_input = downsample(np.asarray(mask, dtype=np.float32), factor)
    pooled = pool_to_cells(model_input, geometry, cells_shape)
    placed = place_cells(torch.from_numpy(pooled), geometry, model_input.shape).numpy()
    return to_stitched_grid(placed, mask.shape, factor)


def method_ceiling(mask: np.ndarray, factor: int, method) -> np.ndarray:
    """:func:`resolution_ceiling` at the cells of ``method`` (the gradcam config's ``method``,
    ``layer`` and ``placement``) for a model input of the stitched grid downsampled by
    ``factor``."""
    from ageatlas.explain.gradcam import map_grid

    input_shape = tuple(n // factor for n in mask.shape)
    geometry, cells = map_grid(method["method"], method["layer"], method["placement"], input_shape)
    return resolution_ceiling(mask, factor, geometry, cells)


def _is_empty(importance: np.ndarray) -> bool:
    finite = importance[np.isfinite(importance)]
    return finite.size == 0 or not np.any(finite != 0)


def group_check(
    participants,
    atlas: nib.Nifti1Image,
    population_mean: nib.Nifti1Image,
    age_labels,
    n_labels: int,
    ceiling=None,
    per_year: nib.Nifti1Image | None = None,
    per_year_of_age: nib.Nifti1Image | None = None,
    fwhm_mm=None,
) -> dict:
    """Registration Dice per stage, importance enrichment and its ceiling for one group.

    ``participants`` yields (eid, registration or None, the truth label map on
    its own grid, attribution map on the stitched grid): the labels are
    resampled to the map's grid for enrichment and taken into atlas space
    from their own grid for Dice (:func:`labels_in_atlas`). ``ceiling`` maps an
    age mask on the stitched grid to the best map the method's resolution
    allows (:func:`resolution_ceiling`); without it no ceiling is reported.
    ``per_year`` and ``per_year_of_age``, the group's slope maps on the predicted and on the
    chronological age, are scored beside ``population_mean``. ``fwhm_mm``: the smoothing
    the population maps were made with (:func:`maps.smooth`); the ceiling is smoothed alike.
    Failed registrations are counted, not used.
    """
    stages = {stage: [] for stage in STAGES}
    native, native_ceiling, warped_ceilings, failed, empty = [], [], [], [], []
    for eid, registration, labels, gradcam in participants:
        label_data = np.asarray(labels_on(gradcam, labels).dataobj)
        importance = np.asarray(gradcam.dataobj, dtype=np.float64)
        native.append(enrichment(importance, label_data, age_labels))
        if _is_empty(importance):
            empty.append(str(eid))
        best = None
        if ceiling is not None:
            best = ceiling(np.isin(label_data, list(age_labels)).astype(np.float32))
            native_ceiling.append(enrichment(best, label_data, age_labels))
        if registration is None:
            failed.append(str(eid))
            continue
        for stage, warped in labels_in_atlas(registration, labels, atlas).items():
            stages[stage].append(warped)
        if best is not None:
            image = nib.Nifti1Image(best.astype(np.float32), gradcam.affine)
            warped = np.asarray(registration.warp(image, order=1).dataobj, dtype=np.float64)
            warped_ceilings.append(smooth(warped, atlas.affine, fwhm_mm))
    result = {
        "n": len(native),
        "failed_registrations": failed,
        "empty_maps": empty,
        "native_enrichment_mean": _mean(native),
        "native_enrichment_median": float(np.nanmedian(native)) if native else None,
        "native_ceiling_mean": _mean(native_ceiling),
    }
    if len(stages["deformable"]) < 2:
        return result
    all_labels = list(range(1, n_labels))
    for stage, maps in stages.items():
        result[f"dice_age_regions_{stage}"] = float(
            np.nanmean(leave_one_out_dice(maps, list(age_labels)))
        )
        result[f"dice_all_regions_{stage}"] = float(
            np.nanmean(leave_one_out_dice(maps, all_labels))
        )
    consensus = majority_labels(stages["deformable"], n_labels)
    population = {"": population_mean, "_per_year": per_year, "_per_year_of_age": per_year_of_age}
    scored = {suffix: image for suffix, image in population.items() if image is not None}
    for suffix, image in scored.items():
        result[f"atlas_enrichment{suffix}"] = enrichment(
            np.asarray(image.get_fdata()), consensus, age_labels
        )
    if warped_ceilings:
        result["atlas_ceiling"] = enrichment(
            np.mean(warped_ceilings, axis=0), consensus, age_labels
        )
        for suffix in scored:
            result[f"atlas_share_of_ceiling{suffix}"] = (
                result[f"atlas_enrichment{suffix}"] / result["atlas_ceiling"]
            )
    return result


def _mean(values) -> float | None:
    return float(np.nanmean(values)) if values else None
