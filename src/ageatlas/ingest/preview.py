"""The stitch job's preview figure: mid-planes of the stitched contrasts, to check by eye.

Written with matplotlib's Agg backend: no display is needed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _upright(plane: np.ndarray) -> np.ndarray:
    """A (horizontal, superior) plane of a RAS volume turned so head is up."""
    return np.flipud(plane.T)


def stitch_preview(
    images: dict[str, np.ndarray], spacing, path: str | Path, title: str = ""
) -> None:
    """Coronal and sagittal mid-planes of each stitched contrast, to spot seams and swaps.

    Volumes are in canonical RAS voxel order (i: left-right, j: posterior-
    anterior, k: inferior-superior), as `ageatlas.ingest.stitch` writes them;
    ``spacing`` (mm per voxel along i, j, k) keeps the body's proportions.
    """
    sx, sy, sz = (float(s) for s in spacing)
    names = list(images)
    fig, axes = plt.subplots(1, 2 * len(names), figsize=(2.2 * len(names) * 2, 5), squeeze=False)
    for col, name in enumerate(names):
        vol = images[name]
        hi = float(np.percentile(vol, 99.5)) or 1.0
        coronal = vol[:, vol.shape[1] // 2, :]
        sagittal = vol[vol.shape[0] // 2, :, :]
        views = (
            (axes[0, 2 * col], coronal, "coronal", sz / sx),
            (axes[0, 2 * col + 1], sagittal, "sagittal", sz / sy),
        )
        for ax, plane, view, aspect in views:
            ax.imshow(_upright(plane), cmap="gray", vmin=0, vmax=hi, aspect=aspect)
            ax.set_title(f"{name} {view}", fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
