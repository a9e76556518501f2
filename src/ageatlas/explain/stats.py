"""Voxel-wise comparison of two sets of warped importance maps.

The paper compares the accelerated and decelerated population maps by eye
(Figure 5). This module adds a test: a two-sample t-test at every voxel with
family-wise error (FWE) control by permutation, using the max-statistic
procedure of `nilearn.mass_univariate.permuted_ols` (Freedman-Lane scheme).
The design is a +1/-1 class column, an intercept and optional confounds
(age, BMI: z-scored), so the t map is positive where the first set has the
higher importance than the confounds explain. The test is two-sided by
default because the paper gives no direction a priori.

Nothing here assumes the maps' range: they may be scaled to [0, 1] or
signed, in years. Voxels are tested where every map is finite (a warped map
is NaN outside the participant's field of view) and not identical in all maps.

Unlike `aggregate.mean_map` this holds every map's in-mask voxels in memory
(permutation needs the whole n x voxels matrix), as float32.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
from nilearn.maskers import NiftiMasker
from nilearn.mass_univariate import permuted_ols

from ageatlas.core.files import nifti_image
from ageatlas.core.paths import eid_of_path
from ageatlas.explain.maps import load_on_grid, subset_eids, usable_maps

MIN_PER_CLASS = 2
# A confound is kept only if this many residual degrees of freedom remain with
# it: with one, t follows a Cauchy law and a 2 + 2 design gives t in the millions.
MIN_RESIDUAL_DF = 2
# A confound whose part not explained by the columns before it is below this
# share of its own norm is taken as collinear with them.
COLLINEAR_TOL = 1e-6


class Untestable(ValueError):
    """The maps cannot be tested (too few of them, no voxel left): the outputs say "not tested"."""


def _reference(path: str) -> tuple[tuple, np.ndarray]:
    img = nib.load(path)
    return img.shape, img.affine


def _testable_voxels(
    paths: list[str], shape, affine, fwhm_mm=None
) -> tuple[np.ndarray, np.ndarray]:
    """Voxels finite in every map, and voxels whose value is not identical in every map.

    A voxel outside one participant's field of view (NaN) cannot enter a test
    of all of them; a constant voxel (background) carries no information and
    would give 0/0 t-values. Streams the maps.
    """
    first, _ = load_on_grid(paths[0], shape, affine, fwhm_mm)
    finite = np.isfinite(first)
    lo = np.where(finite, first, np.inf)
    hi = np.where(finite, first, -np.inf)
    for path in paths[1:]:
        data, _ = load_on_grid(path, shape, affine, fwhm_mm)
        finite &= np.isfinite(data)
        np.fmin(lo, data, out=lo)  # fmin/fmax skip NaN; those voxels are out anyway
        np.fmax(hi, data, out=hi)
    return finite, finite & (hi > lo)


def _check_mask(mask: nib.Nifti1Image, shape, affine) -> np.ndarray:
    if mask.shape[:3] != shape[:3] or not np.allclose(mask.affine, affine, atol=1e-5):
        raise ValueError("mask shape/affine differs from the maps' grid")
    binary = np.asarray(mask.get_fdata()) > 0
    if not binary.any():
        raise ValueError("mask is empty")
    return binary


def _volume(values, mask_bool: np.ndarray, reference, description: str, dtype=np.float32):
    """In-mask values as a volume on the maps' grid, 0 outside, stored as ``dtype``.

    Not the masker's inverse_transform: its image keeps the uint8 mask's
    header, so saving it would cast t-values to bytes.
    """
    volume = np.zeros(mask_bool.shape, np.float32)
    volume[mask_bool] = values
    return nifti_image(volume, reference.affine, description, reference=reference, dtype=dtype)


def _masked_rows(
    paths: list[str], mask_bool: np.ndarray, shape, affine, fwhm_mm=None
) -> np.ndarray:
    """Stack in-mask voxels of each map (smoothed by ``fwhm_mm``), one row per map."""
    rows = np.empty((len(paths), int(mask_bool.sum())), dtype=np.float32)
    for i, path in enumerate(paths):
        data, _ = load_on_grid(path, shape, affine, fwhm_mm)
        rows[i] = data[mask_bool]
    return rows


def confounds_of_maps(paths: list[str], table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row of ``table``'s ``columns`` per map, matched by eid ({eid}.nii.gz), in map order."""
    by_eid = table.assign(eid=table["eid"].astype(str)).set_index("eid")
    eids = [eid_of_path(p) for p in paths]
    missing = sorted(set(eids) - set(by_eid.index))
    if missing:
        raise ValueError(f"maps without a row in the confound table: {missing[:5]}")
    return by_eid.loc[eids, list(columns)].reset_index()


def confound_matrix(
    confounds: pd.DataFrame | None, tested: np.ndarray
) -> tuple[np.ndarray | None, dict]:
    """z-scored confound columns that can be estimated next to ``tested`` and an intercept.

    A confound is dropped, with the reason recorded, when it is constant over
    the maps (nothing to adjust for), when it is collinear with the tested
    column, the intercept and the confounds kept before it (its effect and
    theirs cannot be separated), or when keeping it would leave fewer than
    MIN_RESIDUAL_DF residual degrees of freedom. Returns the matrix (None when nothing is kept) and
    ``{"confounds": kept names, "confounds_dropped": {name: reason}}``.
    A missing value is an error: the test cannot guess it.
    """
    record = {"confounds": [], "confounds_dropped": {}}
    if confounds is None:
        return None, record
    n = len(tested)
    if len(confounds) != n:
        raise ValueError(f"{len(confounds)} confound rows for {n} maps")
    base = np.column_stack([np.ones(n), tested])
    kept = []
    for name in confounds.columns:
        if name == "eid":
            continue
        values = pd.to_numeric(confounds[name], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(values).all():
            raise ValueError(f"confound {name!r} is missing or not a number for some maps")
        spread = values.std()
        if spread <= 1e-12 * max(1.0, np.abs(values).max()):
            record["confounds_dropped"][name] = f"constant ({values[0]:g}) over these maps"
            continue
        z = (values - values.mean()) / spread
        coef, *_ = np.linalg.lstsq(base, z, rcond=None)
        if np.linalg.norm(z - base @ coef) < COLLINEAR_TOL * np.linalg.norm(z):
            record["confounds_dropped"][name] = (
                "collinear with the tested column and the intercept"
                + (f" and {', '.join(record['confounds'])}" if record["confounds"] else "")
                + ": their effects cannot be separated"
            )
            continue
        if n - base.shape[1] - 1 < MIN_RESIDUAL_DF:
            record["confounds_dropped"][name] = (
                f"too few maps ({n}): fewer than {MIN_RESIDUAL_DF} residual degrees of freedom"
                " would be left with it"
            )
            continue
        base = np.column_stack([base, z])
        kept.append(z)
        record["confounds"].append(name)
    return (np.column_stack(kept) if kept else None), record


def compare_classes(
    maps_a: list[str],
    maps_b: list[str],
    mask: nib.Nifti1Image | None = None,
    *,
    confounds: pd.DataFrame | None = None,
    n_perm: int = 1000,
    seed: int = 0,
    tfce: bool = False,
    n_jobs: int = 1,
    alpha: float = 0.05,
    two_sided: bool = True,
    fwhm_mm=None,
) -> dict:
    """Permutation two-sample test of maps_a vs maps_b with max-t FWE control.

    ``confounds``: one row per map (maps_a then maps_b), one numeric column
    per confound (an "eid" column is ignored); see `confound_matrix` for
    which are kept. Returns images "t" (positive where a > b), "logp_fwe"
    (-log10 FWE p) and "significant" (uint8, logp_fwe > -log10(alpha)), plus
    "n_a", "n_b", "n_perm", "alpha", "n_significant", "n_voxels" (tested),
    "n_voxels_not_finite" (left out: NaN or infinite in some map),
    "confounds" and "confounds_dropped". With tfce=True also "tfce" and
    "logp_fwe_tfce". All maps must share the first map's shape and affine.
    `mask` defaults to every voxel; only voxels finite and varying over the
    maps are tested. Raises `Untestable` when a set has fewer than
    MIN_PER_CLASS maps or no voxel is left. ``fwhm_mm``: each map is smoothed first
    (:func:`maps.smooth`), as the population maps are.
    """
    for name, maps in (("maps_a", maps_a), ("maps_b", maps_b)):
        if len(maps) < MIN_PER_CLASS:
            raise Untestable(f"{name} has {len(maps)} maps; need at least {MIN_PER_CLASS}")
    # The smallest attainable p is 1/(n_perm + 1); below 1/alpha nothing could pass.
    if (n_perm + 1) * alpha < 1:
        raise ValueError(f"n_perm={n_perm} cannot reach p < alpha={alpha}")
    paths = list(maps_a) + list(maps_b)
    shape, affine = _reference(paths[0])
    design = np.r_[np.ones(len(maps_a)), -np.ones(len(maps_b))][:, None]
    covars, confound_record = confound_matrix(confounds, design[:, 0])
    wanted = np.ones(shape[:3], bool) if mask is None else _check_mask(mask, shape, affine)
    finite, varying = _testable_voxels(paths, shape, affine, fwhm_mm)
    mask_bool = wanted & varying
    if not mask_bool.any():
        raise Untestable("no voxel is finite in every map and varies across them")
    mask = nib.Nifti1Image(mask_bool.astype(np.uint8), affine)
    masker = NiftiMasker(mask_img=mask).fit()  # TFCE needs the 3D neighbourhood
    target = _masked_rows(paths, mask_bool, shape, affine, fwhm_mm)
    # The intercept is nilearn's (model_intercept): nilearn 0.13 takes one
    # constant column among confounding_vars for an intercept *test* and then
    # flips signs instead of permuting, so none is passed (constants dropped).
    out = permuted_ols(
        design,
        target,
        confounding_vars=covars,
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
    reference = nib.load(paths[0])
    n_maps = f"n={len(maps_a)}+{len(maps_b)}"
    result = {
        "t": _volume(out["t"][0], mask_bool, reference, f"ageatlas t {n_maps}"),
        "logp_fwe": _volume(logp, mask_bool, reference, f"ageatlas -log10 p FWE {n_maps}"),
        "significant": _volume(
            significant, mask_bool, reference, f"ageatlas p<{alpha} FWE", dtype=np.uint8
        ),
        "n_a": len(maps_a),
        "n_b": len(maps_b),
        "n_perm": n_perm,
        "alpha": alpha,
        "n_significant": int(significant.sum()),
        "n_voxels": int(mask_bool.sum()),
        "n_voxels_not_finite": int((wanted & ~finite).sum()),
        **confound_record,
    }
    if tfce:
        result["tfce"] = _volume(out["tfce"][0], mask_bool, reference, "ageatlas TFCE")
        result["logp_fwe_tfce"] = _volume(
            out["logp_max_tfce"][0], mask_bool, reference, "ageatlas -log10 p FWE TFCE"
        )
    return result


def group_contrast(
    table: pd.DataFrame,
    group: str,
    column: str,
    levels: tuple[str, str],
    warped: list[str],
    records: list[str],
    *,
    confounds: list[str] = (),
    failed: dict[str, str] | None = None,
    **test_options,
) -> tuple[dict | None, dict]:
    """Test one group's maps of ``column == levels[0]`` against ``column == levels[1]``.

    ``table`` is the ageing-classes table (eid, age, bmi, group, age_band,
    ageing_class, ...); participants whose registration failed, or whose batch
    could not finish them (``failed``), are left out (`usable_maps`) and
    listed. ``confounds`` are columns of ``table``;
    ``test_options`` go to `compare_classes`. Returns the test's result
    (None when it cannot be run) and the summary for the JSON, which says
    why when ``tested`` is false.
    """
    a, b = levels
    sets, excluded = {}, {}
    for level in levels:
        eids = subset_eids(table, group, f"{column}-{level}")
        sets[level], left_out = usable_maps(eids, warped, records, failed)
        excluded.update(left_out)
    summary = {
        "group": group,
        "contrast": f"{column} {a} vs {b} (t > 0: {a} higher)",
        f"n_{a}": len(sets[a]),
        f"n_{b}": len(sets[b]),
        "excluded": excluded,
        "confounds_requested": list(confounds),
    }
    if min(len(sets[a]), len(sets[b])) < MIN_PER_CLASS:
        summary.update(tested=False, reason=f"fewer than {MIN_PER_CLASS} participants in a class")
        return None, summary
    paths = sets[a] + sets[b]
    values = confounds_of_maps(paths, table, list(confounds)) if confounds else None
    if values is not None:
        summary["confound_means"] = {
            name: {
                a: float(values[name].iloc[: len(sets[a])].mean()),
                b: float(values[name].iloc[len(sets[a]) :].mean()),
            }
            for name in confounds
        }
    try:
        result = compare_classes(sets[a], sets[b], confounds=values, **test_options)
    except Untestable as error:
        summary.update(tested=False, reason=str(error))
        return None, summary
    summary.update(
        tested=True,
        **{
            key: result[key]
            for key in (
                "n_perm",
                "alpha",
                "n_significant",
                "n_voxels",
                "n_voxels_not_finite",
                "confounds",
                "confounds_dropped",
            )
        },
    )
    return result, summary
