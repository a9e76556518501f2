"""Figures of importance maps over their atlas (the paper's Figures 2-6).

Every panel row is one map; the columns are a coronal, a sagittal and an
axial slice through the same point for all rows, chosen where the maps'
summed importance peaks, so rows compare like with like. Volumes are
reoriented to RAS; views are shown head up, the coronal one with the
patient's right on the viewer's right (neurological convention), the
sagittal one facing right (anterior on the right). One colour scale serves
every row; values below the threshold, and anything outside the atlas's
body (atlas below 5% of its maximum), are not drawn.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

VIEWS = ("coronal", "sagittal", "axial")


def _ras(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    canonical = nib.as_closest_canonical(img)
    return np.asarray(canonical.get_fdata(dtype=np.float32)), np.asarray(
        canonical.header.get_zooms()[:3]
    )


def _cuts(maps: list[np.ndarray], body: np.ndarray | None = None) -> tuple[int, int, int]:
    """Slices to show: sagittal and coronal through the body's centre, axial at the importance peak.

    Without a body mask every axis goes through the peak of the summed,
    NaN-free importance.
    """
    total = sum(np.nan_to_num(m) for m in maps)
    if body is not None and body.any():
        total = total * body
    peak = [
        int(np.argmax(total.sum(axis=tuple(a for a in range(3) if a != axis)))) for axis in range(3)
    ]
    if body is None or not body.any():
        return tuple(peak)
    centre = np.argwhere(body).mean(axis=0).round().astype(int)
    return int(centre[0]), int(centre[1]), peak[2]


def _body(atlas: np.ndarray) -> np.ndarray:
    return atlas > 0.05 * float(np.nanmax(atlas))


def _plane(volume: np.ndarray, view: str, cut) -> np.ndarray:
    i, j, k = cut
    plane = {"coronal": volume[:, j, :], "sagittal": volume[i, :, :], "axial": volume[:, :, k]}[
        view
    ]
    return np.flipud(plane.T)  # rows: superior (or anterior) at the top


def _aspect(view: str, zooms) -> float:
    sx, sy, sz = zooms
    return {"coronal": sz / sx, "sagittal": sz / sy, "axial": sy / sx}[view]


def _draw(ax, atlas, overlay, view, cut, zooms, vmax, threshold):
    background = _plane(atlas, view, cut)
    ax.imshow(
        background,
        cmap="gray",
        aspect=_aspect(view, zooms),
        vmin=0,
        vmax=float(np.percentile(atlas, 99.5)) or 1.0,
    )
    if overlay is None:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="white")
        return None
    plane = _plane(overlay, view, cut)
    inside = _plane(_body(atlas), view, cut)
    shown = np.ma.masked_where(~((plane >= threshold) & inside), plane)
    return ax.imshow(
        shown, cmap="hot", vmin=threshold, vmax=vmax, alpha=0.8, aspect=_aspect(view, zooms)
    )


def importance_panels(
    atlases: list[nib.Nifti1Image],
    maps: list[nib.Nifti1Image | None],
    labels: list[str],
    path: str | Path,
    *,
    title: str = "",
    threshold: float = 0.2,
    colorbar_label: str = "mean importance |map|",
) -> None:
    """One row per map over its atlas (rows may have different atlases).

    ``maps`` entries may be None (an empty subset): the row shows the atlas
    and says "no data". The colour scale runs from ``threshold`` times the
    largest value in any map (maps may be min-max scaled or in years) to that
    value.
    """
    if not (len(atlases) == len(maps) == len(labels)):
        raise ValueError("atlases, maps and labels must have the same length")
    atlas_data = [_ras(a) for a in atlases]
    map_data = [None if m is None else _ras(m)[0] for m in maps]
    present = [m for m in map_data if m is not None and np.isfinite(m).any()]
    vmax = max([float(np.nanmax(m)) for m in present] + [1e-12])
    threshold = threshold * vmax
    body = _body(atlas_data[0][0])
    cut = _cuts(present, body) if present else tuple(s // 2 for s in atlas_data[0][0].shape)
    fig, axes = plt.subplots(
        len(maps), 3, figsize=(7.5, 3.2 * len(maps)), squeeze=False, layout="constrained"
    )
    image = None
    for row, ((atlas, zooms), overlay, label) in enumerate(zip(atlas_data, map_data, labels)):
        for col, view in enumerate(VIEWS):
            ax = axes[row, col]
            drawn = _draw(
                ax, atlas, overlay, view, _clip_cut(cut, atlas.shape), zooms, vmax, threshold
            )
            image = drawn or image
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(view, fontsize=9)
        axes[row, 0].set_ylabel(label, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label=colorbar_label)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _clip_cut(cut, shape) -> tuple[int, int, int]:
    return tuple(min(c, s - 1) for c, s in zip(cut, shape))


def class_test_panels(
    atlas: nib.Nifti1Image,
    tmap: nib.Nifti1Image,
    significant: nib.Nifti1Image,
    path: str | Path,
    *,
    title: str = "",
) -> None:
    """t map (accelerated minus decelerated) with the significant voxels outlined."""
    atlas_data, zooms = _ras(atlas)
    t, _ = _ras(tmap)
    mask, _ = _ras(significant)
    t = np.nan_to_num(t)
    body = _body(atlas_data)
    cut = _cuts([np.abs(t) * (mask > 0)], body) if (mask > 0).any() else _cuts([np.abs(t)], body)
    limit = float(np.abs(t).max()) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 3.6), squeeze=False, layout="constrained")
    for col, view in enumerate(VIEWS):
        ax = axes[0, col]
        ax.imshow(_plane(atlas_data, view, cut), cmap="gray", aspect=_aspect(view, zooms))
        shown = np.ma.masked_where(_plane(t, view, cut) == 0, _plane(t, view, cut))
        image = ax.imshow(
            shown, cmap="coolwarm", vmin=-limit, vmax=limit, alpha=0.8, aspect=_aspect(view, zooms)
        )
        if (mask > 0).any():
            ax.contour(_plane(mask, view, cut) > 0, levels=[0.5], colors="lime", linewidths=0.8)
        ax.set_title(view, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.7, label="t (accelerated - decelerated)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def examples_panels(
    atlas: nib.Nifti1Image,
    rows: dict[str, list[tuple[str, nib.Nifti1Image]]],
    path: str | Path,
    *,
    title: str = "",
    threshold: float = 0.2,
) -> None:
    """Individual warped maps, coronal slices: one row per class, one column per participant.

    ``rows`` maps a row label (e.g. "accelerated") to (caption, map) pairs.
    Importance is drawn as |map| from ``threshold`` times the largest shown.
    """
    atlas_data, zooms = _ras(atlas)
    maps = {
        label: [(caption, np.abs(_ras(img)[0])) for caption, img in items]
        for label, items in rows.items()
    }
    everything = [m for items in maps.values() for _, m in items]
    finite = [float(np.nanmax(m)) for m in everything if np.isfinite(m).any()]
    vmax = max(finite + [1e-12])
    cut = (
        _cuts(everything, _body(atlas_data))
        if everything
        else tuple(s // 2 for s in atlas_data.shape)
    )
    n_cols = max([len(items) for items in maps.values()] + [1])
    fig, axes = plt.subplots(
        len(maps),
        n_cols,
        figsize=(2.2 * n_cols, 3.4 * len(maps)),
        squeeze=False,
        layout="constrained",
    )
    for row, (label, items) in enumerate(maps.items()):
        for col in range(n_cols):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(items):
                caption, overlay = items[col]
                _draw(ax, atlas_data, overlay, "coronal", cut, zooms, vmax, threshold * vmax)
                ax.set_title(caption, fontsize=7)
            else:
                ax.axis("off")
        axes[row, 0].set_ylabel(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)
