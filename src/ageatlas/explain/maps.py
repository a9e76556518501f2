"""Population importance maps: voxel-wise mean and SD of warped attribution maps.

Each participant's Grad-CAM map has already been warped into its sex x BMI
group atlas, so within a group all maps share one grid. The paper averages
them into a population map per group (Figure 2), per age band (Figure 3) and
per ageing class (Figure 5); this module builds those maps, and the ageing
classes themselves, from the bias-corrected brain-age gap.

Ageing classes: the paper says only "strongly over/under-estimated" and gives
no cut-off, so the threshold is a configuration choice. By default it is one
sample standard deviation (ddof=1) of the gap passed in; a fixed threshold in
years may be given instead. The SD is taken over whatever `gap` holds, so the
caller decides whether classes are defined over the whole test set or within
a group.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pandas as pd

from ageatlas.core.files import nifti_image
from ageatlas.core.paths import eid_of_path
from ageatlas.core.vocabulary import AGEING_CLASSES, SUBSETS


def ageing_class(
    gap: pd.Series, threshold: float | None = None, sd_multiple: float = 1.0
) -> pd.Series:
    """Label each gap accelerated (> +t), decelerated (< -t) or aligned.

    t is `threshold` if given, else `sd_multiple` * SD(gap) (ddof=1, NaN
    ignored). Missing gaps stay missing rather than counting as aligned.
    """
    t = threshold if threshold is not None else sd_multiple * gap.std(ddof=1)
    if not np.isfinite(t) or t < 0:
        raise ValueError(f"ageing-class threshold must be finite and >= 0, got {t}")
    labels = np.where(gap > t, "accelerated", np.where(gap < -t, "decelerated", "aligned"))
    out = pd.Series(labels, index=gap.index, dtype=object).where(gap.notna())
    return out.astype(pd.CategoricalDtype(AGEING_CLASSES))


def near_perfect(gap: pd.Series, limit: float = 0.5) -> pd.Series:
    """True where the absolute prediction error is below `limit` years (Figure 4)."""
    return gap.abs() < limit


def load_on_grid(
    path: str, ref_shape=None, ref_affine=None, fwhm_mm=None
) -> tuple[np.ndarray, np.ndarray]:
    """Load one map as float64, checking it sits on the reference grid; smoothed by
    ``fwhm_mm`` (:func:`smooth`) when given."""
    img = nib.load(path)
    if ref_shape is not None and img.shape != ref_shape:
        raise ValueError(f"{path}: shape {img.shape} differs from reference {ref_shape}")
    if ref_affine is not None and not np.allclose(img.affine, ref_affine, atol=1e-5):
        raise ValueError(f"{path}: affine differs from the reference map's affine")
    data = np.asarray(img.get_fdata(dtype=np.float64))
    return smooth(data, img.affine, fwhm_mm), img.affine


def smooth(data: np.ndarray, affine: np.ndarray, fwhm_mm) -> np.ndarray:
    """A map smoothed by a Gaussian of ``fwhm_mm`` (one value, or one per axis) within its
    field of view; unchanged when ``fwhm_mm`` is None or 0.

    Smoothing before the group statistics, as in voxel-based morphometry, lets
    neighbouring contributions of opposite sign (a voxel-level attribution's
    noise) cancel and absorbs what registration leaves misaligned; its price is
    resolution, which the truth check's ceiling pays alike. NaN voxels (outside
    the participant's field of view) stay NaN and do not pull their neighbours
    towards zero: the smoothed map is divided by the smoothed coverage
    (normalised convolution).
    """
    fwhm = _fwhm(fwhm_mm)
    if fwhm is None:
        return data
    from nilearn.image import smooth_img

    covered = np.isfinite(data)
    stacked = np.stack([np.where(covered, data, 0.0), covered.astype(np.float64)], axis=-1)
    smoothed = np.asarray(smooth_img(nib.Nifti1Image(stacked, affine), fwhm).dataobj)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(covered, smoothed[..., 0] / smoothed[..., 1], np.nan)


def _fwhm(fwhm_mm) -> np.ndarray | None:
    """``fwhm_mm`` as an array of FWHMs, or None where it asks for no smoothing."""
    fwhm = np.atleast_1d(np.asarray(fwhm_mm if fwhm_mm is not None else 0, dtype=float))
    return fwhm if np.any(fwhm > 0) else None


@dataclass(frozen=True)
class PopulationMaps:
    """A subset's population maps on the atlas grid (see :func:`mean_map`)."""

    mean: nib.Nifti1Image
    sd: nib.Nifti1Image
    positive: nib.Nifti1Image
    negative: nib.Nifti1Image
    count: nib.Nifti1Image
    per_year: nib.Nifti1Image
    per_year_of_age: nib.Nifti1Image
    n: int


def mean_map(paths: list[str], predicted=None, age=None, fwhm_mm=None) -> PopulationMaps:
    """Voxel-wise population maps of warped maps on one grid, over the maps that cover each voxel.

    ``mean`` and ``sd`` (ddof=1) are of the importance |map| (for one-sided
    maps such as Grad-CAM, the map itself); ``positive`` and ``negative`` are
    the means of the signed map's parts (max(m, 0), min(m, 0); they sum to the
    signed mean); ``count`` is how many maps cover each voxel. A warped map
    marks voxels outside the participant's field of view NaN: they are left
    out, not averaged in as zeros. A voxel no map covers is NaN, and SD needs
    two. Streams with Welford's update so only one map is held at a time (a
    group has ~200 whole-body volumes). The first map fixes the reference
    shape and affine; any other map that differs raises, naming the file.

    ``per_year`` (with ``predicted``, each map's predicted age in ``paths``'
    order) is the voxel-wise least-squares slope of the signed map on the
    predicted age, over the maps covering the voxel: map units per year of
    predicted age (for maps in years, the share of each year that the voxel
    carries). Evidence that rises with the prediction adds up; evidence of
    either sign that does not, such as one participant's noise, cancels,
    which the mean |map| cannot do. NaN where fewer than 2 maps cover a voxel
    or their predictions do not differ, and everywhere without ``predicted``.

    ``per_year_of_age`` (with ``age``, each participant's chronological age)
    is the same slope on the chronological age: how the model's evidence
    changes as people age. Evidence the model uses that does not follow age
    (a confound, or what makes its errors) cancels here too, where it adds up
    in ``per_year``; the paper's age-band maps ask the same question in bins.

    ``fwhm_mm``: each map is smoothed (:func:`smooth`) before it enters any of them.
    """
    if not paths:
        raise ValueError("mean_map needs at least one map")
    for name, values in (("predicted ages", predicted), ("ages", age)):
        if values is not None and len(values) != len(paths):
            raise ValueError(f"{len(paths)} maps but {len(values)} {name}")
    first, affine = load_on_grid(paths[0], fwhm_mm=fwhm_mm)
    count = np.zeros(first.shape, dtype=np.int64)
    mean, m2, positive, negative = (np.zeros(first.shape) for _ in range(4))
    slopes = {
        name: (_Slope(first.shape), values)
        for name, values in (("per year", predicted), ("per year of age", age))
        if values is not None
    }
    for i, path in enumerate(paths):
        if i == 0:
            data = first
        else:
            data, _ = load_on_grid(path, first.shape, affine, fwhm_mm)
        covered = np.isfinite(data)
        signed = np.where(covered, data, 0.0)
        count += covered
        n_here = np.maximum(count, 1)
        magnitude = np.abs(signed)
        delta = np.where(covered, magnitude - mean, 0.0)
        mean += delta / n_here
        m2 += delta * np.where(covered, magnitude - mean, 0.0)
        positive += np.maximum(signed, 0.0)
        negative += np.minimum(signed, 0.0)
        for slope, values in slopes.values():
            slope.add(signed, covered, float(values[i]))
    n = len(paths)
    with np.errstate(invalid="ignore", divide="ignore"):
        uncovered = count == 0
        mean[uncovered] = np.nan
        sd = np.where(count > 1, np.sqrt(m2 / np.maximum(count - 1, 1)), np.nan)
        positive = np.where(uncovered, np.nan, positive / np.maximum(count, 1))
        negative = np.where(uncovered, np.nan, negative / np.maximum(count, 1))

    fwhm = _fwhm(fwhm_mm)
    smoothed = "" if fwhm is None else f" fwhm {'x'.join(f'{f:g}' for f in fwhm)} mm"

    def image(data, what):
        return nifti_image(data, affine, f"ageatlas {what} n={n}{smoothed}")

    def slope_image(what):
        if what not in slopes:
            return image(np.full(first.shape, np.nan), what)
        return image(slopes[what][0].result(count), what)

    return PopulationMaps(
        image(mean, "mean"),
        image(sd, "sd"),
        image(positive, "positive"),
        image(negative, "negative"),
        image(count.astype(np.float32), "count"),
        slope_image("per year"),
        slope_image("per year of age"),
        n,
    )


class _Slope:
    """Streaming voxel-wise least-squares slope of maps on one number per map (an age).

    Sums are taken around the first value seen, so that ages near 60 do not
    cancel catastrophically in the variance.
    """

    def __init__(self, shape):
        self.origin = None
        self.x, self.xx, self.y, self.xy = (np.zeros(shape) for _ in range(4))

    def add(self, signed, covered, value: float) -> None:
        self.origin = value if self.origin is None else self.origin
        x = np.where(covered, value - self.origin, 0.0)
        self.x += x
        self.xx += x * x
        self.y += signed
        self.xy += x * signed

    def result(self, count: np.ndarray) -> np.ndarray:
        """The slope, given how many maps covered each voxel (the population's count)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            n = np.maximum(count, 1)
            variance = self.xx - self.x * self.x / n
            slope = (self.xy - self.x * self.y / n) / variance
        spread = variance > 1e-9 * np.maximum(self.xx, 1.0)
        return np.where((count >= 2) & spread, slope, np.nan)


def ageing_table(
    predictions: pd.DataFrame,
    cohort: pd.DataFrame,
    *,
    threshold: float | None = None,
    sd_multiple: float = 1.0,
    near_perfect_limit: float = 0.5,
) -> pd.DataFrame:
    """Test participants with group, age band, bias-corrected gap and ageing class.

    Classes are defined within each sex x BMI group (the paper's Figure 5 is
    one group), by ``threshold`` years or ``sd_multiple`` x the group's SD.
    """
    test = predictions.loc[predictions["split"] == "test", ["eid", "age", "gap"]].copy()
    test["eid"] = test["eid"].astype(str)  # eids name files: text, as in the cohort table
    cohort = cohort.assign(eid=cohort["eid"].astype(str))
    missing = set(test["eid"]) - set(cohort["eid"])
    if missing:
        raise ValueError(
            f"predicted participants missing from the cohort table: {sorted(missing)[:5]}"
        )
    table = test.merge(cohort[["eid", "sex", "bmi", "group", "age_band"]], on="eid", how="left")
    classes = [
        _group_classes(part["gap"], threshold, sd_multiple)
        for _, part in table.groupby("group", sort=True)
    ]
    table["ageing_class"] = (
        pd.concat(classes).reindex(table.index).astype(object) if classes else []
    )
    table["near_perfect"] = near_perfect(table["gap"], near_perfect_limit)
    return table.sort_values(["group", "eid"]).reset_index(drop=True)


def _group_classes(gap: pd.Series, threshold, sd_multiple) -> pd.Series:
    """Classes of one group; none (NaN) when an SD threshold has fewer than 2 gaps to come from."""
    if threshold is None and gap.notna().sum() < 2:
        return pd.Series(np.nan, index=gap.index, dtype=pd.CategoricalDtype(AGEING_CLASSES))
    return ageing_class(gap, threshold, sd_multiple)


def subset_eids(table: pd.DataFrame, group: str, subset: str) -> list:
    """eids of one group's subset (one of :data:`SUBSETS`)."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; expected one of {', '.join(SUBSETS)}")
    rows = table.loc[table["group"] == group]
    if subset != "all":
        column, value = subset.split("-", 1)
        rows = rows.loc[rows[column] == value]
    return rows["eid"].tolist()


def nan_map(reference: nib.Nifti1Image, description: str = "") -> nib.Nifti1Image:
    """An all-NaN map on ``reference``'s grid: stands in for a map that cannot exist.

    NaN makes an accidental average visibly wrong instead of quietly biased.
    """
    return nifti_image(np.full(reference.shape[:3], np.nan), reference.affine, description)


def usable_maps(eids, warped_paths, record_paths, failed=None) -> tuple[list[str], dict[str, str]]:
    """Warped maps of ``eids`` whose registration passed QC, and why the others are out.

    Paths are matched to eids by file name ({eid}.nii.gz, {eid}.json).
    ``failed``: eid -> why its batch could not finish it (ageatlas.core.batch_run.failures);
    any other participant with no record is an error, not a silent drop.
    """
    import json

    failed = failed or {}
    warped = {eid_of_path(p): str(p) for p in warped_paths}
    records = {eid_of_path(p): str(p) for p in record_paths}
    used, excluded = [], {}
    for eid in map(str, eids):
        if eid in failed:
            excluded[eid] = failed[eid]
            continue
        if eid not in warped or eid not in records:
            raise ValueError(
                f"participant {eid}: no warped map or registration record among the inputs"
            )
        record = json.loads(open(records[eid]).read())
        if record["status"] == "ok":
            used.append(warped[eid])
        else:
            excluded[eid] = "registration failed: " + "; ".join(record["reasons"])
    return used, excluded
