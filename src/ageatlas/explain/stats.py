"""Voxel-wise comparison of two sets of warped importance maps.

The paper compares the accelerated and decelerated population maps by eye
(Figure 5). This module adds a test: a two-sample t-test at every voxel with
family-wise error (FWE) control by permutation, using the max-statistic
procedure of `nilearn.mass_univariate.permuted_ols` (Freedman-Lane scheme).
The design is a +1/-1 class column with an intercept confound, so the t map
is positive where the first set has the higher importance. The test is
two-sided by default because the paper gives no direction a priori.

Unlike `aggregate.mean_map` this holds every map's in-mask voxels in memory
(permutation needs the whole n x voxels matrix), as float32.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from nilearn.maskers import NiftiMasker
from nilearn.mass_univariate import permuted_ols

from ageatlas.explain.maps import load_on_grid

MIN_PER_CLASS = 2


def _reference(path: str) -> tuple[tuple, np.ndarray]:
    img = nib.load(path)
    return img.shape, img.affine


def _varying_mask(paths: list[str], shape, affine) -> nib.Nifti1Image:
    """Voxels whose value is not identical in every map.

    Constant voxels (background outside the body) carry no information and
    would give 0/0 t-values, so the default mask drops them. Streams the maps.
    """
    lo, _ = load_on_grid(paths[0], shape, affine)
    hi = lo.copy()
    for path in paths[1:]:
        data, _ = load_on_grid(path, shape, affine)
        np.minimum(lo, data, out=lo)
        np.maximum(hi, data, out=hi)
    return nib.Nifti1Image((hi > lo).astype(np.uint8), affine)


def _check_mask(mask: nib.Nifti1Image, shape, affine) -> nib.Nifti1Image:
    if mask.shape[:3] != shape[:3] or not np.allclose(mask.affine, affine, atol=1e-5):
        raise ValueError("mask shape/affine differs from the maps' grid")
    binary = np.asarray(mask.get_fdata()) > 0
    if not binary.any():
        raise ValueError("mask is empty")
    return nib.Nifti1Image(binary.astype(np.uint8), affine)


def _masked_rows(paths: list[str], mask_bool: np.ndarray, shape, affine) -> np.ndarray:
    """Stack in-mask voxels of each map, one row per map."""
    rows = np.empty((len(paths), int(mask_bool.sum())), dtype=np.float32)
    for i, path in enumerate(paths):
        data, _ = load_on_grid(path, shape, affine)
        rows[i] = data[mask_bool]
    return rows


def compare_classes(
    maps_a: list[str],
    maps_b: list[str],
    mask: nib.Nifti1Image | None = None,
    *,
    n_perm: int = 1000,
    seed: int = 0,
    tfce: bool = False,
    n_jobs: int = 1,
    alpha: float = 0.05,
    two_sided: bool = True,
) -> dict:
    """Permutation two-sample test of maps_a vs maps_b with max-t FWE control.

    Returns images "t" (positive where a > b), "logp_fwe" (-log10 FWE p) and
    "significant" (uint8, logp_fwe > -log10(alpha)), plus "n_a", "n_b",
    "n_perm", "alpha" and "n_significant". With tfce=True also "tfce" and
    "logp_fwe_tfce". All maps must share the first map's shape and affine.
    `mask` defaults to voxels that vary across the maps.
    """
    for name, maps in (("maps_a", maps_a), ("maps_b", maps_b)):
        if len(maps) < MIN_PER_CLASS:
            raise ValueError(f"{name} has {len(maps)} maps; need at least {MIN_PER_CLASS}")
    # The smallest attainable p is 1/(n_perm + 1); below 1/alpha nothing could pass.
    if (n_perm + 1) * alpha < 1:
        raise ValueError(f"n_perm={n_perm} cannot reach p < alpha={alpha}")
    paths = list(maps_a) + list(maps_b)
    shape, affine = _reference(paths[0])
    if mask is None:
        mask = _varying_mask(paths, shape, affine)
    else:
        mask = _check_mask(mask, shape, affine)
    masker = NiftiMasker(mask_img=mask).fit()  # TFCE needs the 3D neighbourhood
    mask_bool = np.asarray(mask.get_fdata()) > 0
    target = _masked_rows(paths, mask_bool, shape, affine)
    design = np.r_[np.ones(len(maps_a)), -np.ones(len(maps_b))][:, None]
    out = permuted_ols(
        design,
        target,
        model_intercept=True,
        n_perm=n_perm,
        two_sided_test=two_sided,
        random_state=seed,
        n_jobs=n_jobs,
        masker=masker,
        tfce=tfce,
        output_type="dict",
    )
    logp = out["logp_max_t"][0]
    significant = (logp > -np.log10(alpha)).astype(np.uint8)
    result = {
        "t": masker.inverse_transform(out["t"][0]),
        "logp_fwe": masker.inverse_transform(logp),
        "significant": masker.inverse_transform(significant),
        "n_a": len(maps_a),
        "n_b": len(maps_b),
        "n_perm": n_perm,
        "alpha": alpha,
        "n_significant": int(significant.sum()),
    }
    if tfce:
        result["tfce"] = masker.inverse_transform(out["tfce"][0])
        result["logp_fwe_tfce"] = masker.inverse_transform(out["logp_max_tfce"][0])
    return result
