"""Making stations agree: fat-water swaps, station gains, and N4 bias correction.

In each overlap of neighbouring stations, fat-water swaps are flagged by
correlating W and F, and gains estimated from medians of W+F. Both fall back
to the untrimmed end slices when coarse data leave no overlap after trimming.
Optionally, a bias field estimated by N4 on the stitched W+F is divided out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ageatlas.ingest.grid import Grid
from ageatlas.ingest.placement import untrimmed
from ageatlas.ingest.volume import StationVolume

#: Tissue = W+F above this fraction of its 99th percentile in an overlap.
TISSUE_FRACTION = 0.1
#: Fewer tissue voxels than this in an overlap: no gain or swap estimate.
MIN_TISSUE_VOXELS = 50
GAIN_WARN = 2.5  # a station gain beyond this factor is a QC warning
#: A junction counts as W/F-disagreeing only when cross-contrast correlation beats
#: same-contrast correlation by this much (the scores of real swaps are near 2 or more).
SWAP_MARGIN = 0.2
#: In-plane subsampling of overlap statistics (robust, and 4x cheaper).
STAT_STRIDE = 2


@dataclass
class _Overlap:
    """Both neighbours sampled on the grid slices they share (in-plane subsampled)."""

    upper: dict[str, np.ndarray]
    lower: dict[str, np.ndarray]
    tissue: np.ndarray  # both valid and W+F above threshold in both


def _overlap(up, down, level: Sequence[str]) -> _Overlap | None:
    shared = np.flatnonzero(up.zvalid & down.zvalid)
    if shared.size == 0:
        return None
    k0, k1 = int(shared[0]), int(shared[-1]) + 1
    ones = np.ones(k1 - k0, np.float32)
    sub = (slice(None), slice(None, None, STAT_STRIDE), slice(None, None, STAT_STRIDE))
    upper = {c: up.render(c, k0, k1, ones)[sub] for c in level}
    lower = {c: down.render(c, k0, k1, ones)[sub] for c in level}
    both = (up.valid(k0, k1) & down.valid(k0, k1)) & np.ones((k1 - k0, 1, 1), bool)
    tissue = both[sub]
    for side in (upper, lower):
        if tissue.any():
            total = sum(side[c] for c in level)
            tissue &= total > TISSUE_FRACTION * np.percentile(total[tissue], 99)
    return _Overlap(upper, lower, tissue)


def _too_thin(ov: _Overlap | None) -> bool:
    return ov is None or int(ov.tissue.sum()) < MIN_TISSUE_VOXELS


def junction_overlaps(placed, affine, grid: Grid, level, info: list[str]) -> list:
    """Overlap samples per junction, from untrimmed end slices where the trimmed one is too thin.

    Coarse data (e.g. 18 mm slices overlapping by one slice) keep almost nothing
    after trimming. The folded end slices are still good enough to compare levels
    and W/F, though not to blend.
    """
    overlaps = []
    for up, down in zip(placed, placed[1:]):
        ov = _overlap(up, down, level)
        if _too_thin(ov) and (up.geo.trim_inf or down.geo.trim_sup):
            wide = _overlap(untrimmed(up, affine, grid), untrimmed(down, affine, grid), level)
            if not _too_thin(wide):
                ov = wide
                info.append(
                    f"overlap of stations {up.geo.label} and {down.geo.label} measured on "
                    "untrimmed end slices (trimmed overlap too thin)"
                )
        overlaps.append(ov)
    return overlaps


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(dtype=np.float64)
    b = b - b.mean(dtype=np.float64)
    den = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / den) if den > 0 else 0.0


def swap_score(wa: np.ndarray, fa: np.ndarray, wb: np.ndarray, fb: np.ndarray) -> float:
    """Cross minus same-contrast correlation of two neighbours' voxels in their overlap.

    Clearly positive: one of the two has W and F swapped relative to the other.
    """
    wa, fa, wb, fb = (np.asarray(v, np.float64).ravel() for v in (wa, fa, wb, fb))
    return _corr(wa, fb) + _corr(fa, wb) - _corr(wa, wb) - _corr(fa, fb)


def attribute_swaps(
    disagree: Sequence[bool | None], fat_fraction: Sequence[float] | None = None
) -> list[int]:
    """Positions (head to foot) of swapped stations, from per-junction disagreement.

    A junction where neighbours disagree flips the W/F parity, so the stations of
    a chain split into two parity classes. The minority class is the swapped one.
    This covers an end station (one disagreeing junction) and a middle station
    (two). An undetermined junction (None) breaks the chain, and each segment is
    judged on its own. On a tie, the class with the higher mean fat fraction is
    taken as swapped, because tissue is mostly water-dominant. Without fat
    fractions a tie flags nothing.
    """
    flagged, start = [], 0
    for end in range(len(disagree) + 1):
        if end == len(disagree) or disagree[end] is None:
            flagged += _minority_class(disagree[start:end], start, fat_fraction)
            start = end + 1
    return flagged


def _minority_class(
    links: Sequence[bool], first: int, fat_fraction: Sequence[float] | None
) -> list[int]:
    parity = [False]
    for d in links:
        parity.append(parity[-1] ^ bool(d))
    odd = [first + i for i, p in enumerate(parity) if p]
    even = [first + i for i, p in enumerate(parity) if not p]
    if len(odd) != len(even):
        return min(odd, even, key=len)
    if not odd or fat_fraction is None:
        return []
    ff = np.asarray(fat_fraction, float)
    return odd if ff[odd].mean() > ff[even].mean() else even


def _fat_fraction(vol: StationVolume) -> float:
    """Median F/(W+F) over a station's tissue (coarsely subsampled)."""
    sub = (slice(None, None, 4), slice(None, None, 4), slice(None, None, 2))
    w = np.asarray(vol.images["W"][sub], np.float32)
    f = np.asarray(vol.images["F"][sub], np.float32)
    s = w + f
    tissue = s > TISSUE_FRACTION * np.percentile(s, 99)
    return float(np.median(f[tissue] / s[tissue])) if tissue.any() else 0.5


def gain_ratio(upper: np.ndarray, lower: np.ndarray) -> float | None:
    """Robust level ratio of two stations on the same tissue voxels: median(upper)/median(lower)."""
    if upper.size < MIN_TISSUE_VOXELS:
        return None
    mu, ml = float(np.median(upper)), float(np.median(lower))
    return mu / ml if mu > 0 and ml > 0 else None


def propagate_gains(ratios: Sequence[float | None], ref: int) -> np.ndarray:
    """Gain per station, 1 at `ref`, chaining junction ratios (None counts as 1).

    ratios[i] = level of station i / level of station i+1 in their overlap. Multiplying
    each station by its gain brings every overlap to the reference station's level.
    """
    gains = np.ones(len(ratios) + 1)
    for i in range(ref, len(ratios)):
        gains[i + 1] = gains[i] * (ratios[i] or 1.0)
    for i in range(ref - 1, -1, -1):
        gains[i] = gains[i + 1] / (ratios[i] or 1.0)
    return gains


def find_swaps(placed, overlaps, fix: bool, notes: list[str]) -> list[int]:
    disagree = []
    for up, down, ov in zip(placed, placed[1:], overlaps):
        if _too_thin(ov):
            notes.append(
                f"fat-water swap check skipped between stations {up.geo.label} and "
                f"{down.geo.label}: too little shared tissue"
            )
            disagree.append(None)
            continue
        t = ov.tissue
        score = swap_score(ov.upper["W"][t], ov.upper["F"][t], ov.lower["W"][t], ov.lower["F"][t])
        disagree.append(score > SWAP_MARGIN)
    if not any(d for d in disagree if d is not None):
        return []
    fat = [_fat_fraction(st.geo.vol) for st in placed]
    flagged = attribute_swaps(disagree, fat)
    if not flagged:
        notes.append("fat-water swap suspected but not attributable to a station")
    for pos in flagged:
        placed[pos].swapped = fix
        notes.append(
            f"station {placed[pos].geo.label}: fat-water swap suspected; "
            + ("W and F swapped back" if fix else "left as acquired")
        )
    return [placed[pos].geo.label for pos in flagged]


def harmonise(
    placed, overlaps, level: Sequence[str], notes: list[str], info: list[str]
) -> np.ndarray:
    ratios = []
    for up, down, ov in zip(placed, placed[1:], overlaps):
        ratio = None
        if ov is not None:
            t = ov.tissue
            ratio = gain_ratio(
                sum(ov.upper[c][t] for c in level), sum(ov.lower[c][t] for c in level)
            )
        if ratio is None:
            notes.append(
                f"no gain estimate between stations {up.geo.label} and {down.geo.label}: "
                "too little shared tissue"
            )
        ratios.append(ratio)
    gains = propagate_gains(ratios, ref=(len(placed) - 1) // 2)
    info.append(
        "station gains " + ", ".join(f"{st.geo.label}: {g:.2f}" for st, g in zip(placed, gains))
    )
    for st, g in zip(placed, gains):
        # Receiver gains differ by tens of percent between stations; beyond
        # GAIN_WARN the overlap statistics more likely mislead than the scanner.
        if not 1 / GAIN_WARN <= g <= GAIN_WARN:
            notes.append(f"station {st.geo.label} rescaled by {g:.2f} to match its neighbours")
    return gains


# ------------------------------------------------------------------------- N4


def n4_bias_field(
    image_zyx: np.ndarray,
    spacing_xyz: Sequence[float],
    mask: np.ndarray | None = None,
    shrink: int = 4,
    iterations: Sequence[int] = (50, 50, 30),
) -> np.ndarray:
    """Multiplicative bias field (> 0, same shape) of a (z, y, x) image, by N4 (SimpleITK).

    Fitted on a shrunk copy for speed, evaluated at full resolution.
    """
    import SimpleITK as sitk

    image_zyx = np.asarray(image_zyx, np.float32)
    if mask is None:
        positive = image_zyx[image_zyx > 0]
        level = np.percentile(positive, 99) if positive.size else 0.0
        mask = image_zyx > TISSUE_FRACTION * level
    img = sitk.GetImageFromArray(image_zyx)
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    msk = sitk.GetImageFromArray(mask.astype(np.uint8))
    msk.CopyInformation(img)
    # Shrink while keeping >= 32 voxels per axis so small grids are fitted as they are.
    factors = [max(1, min(shrink, n // 32)) for n in img.GetSize()]
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.Execute(sitk.Shrink(img, factors), sitk.Shrink(msk, factors))
    log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(img))
    return np.exp(log_field).astype(np.float32)
