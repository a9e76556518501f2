"""Figure 9: Grad-CAM over the 2.5D projections. Written with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_CHANNELS = ("water", "fat")


def projection_cam_figure(
    images, cams, titles, path: str | Path, channel: int = 0, alpha: float = 0.45
):
    """Figure 9: one row per participant, its projection (water by default) and the Grad-CAM over
    it.

    ``images`` are (2, H, W) projections, ``cams`` (H, W) maps in [0, 1].
    """
    if not len(images) == len(cams) == len(titles) or not len(images):
        raise ValueError(
            f"need as many images, maps and titles (>= 1): "
            f"{len(images)}, {len(cams)}, {len(titles)}"
        )
    fig, axes = plt.subplots(len(images), 2, figsize=(8, 4.2 * len(images)), squeeze=False)
    for row, (image, cam, title) in zip(axes, zip(images, cams, titles)):
        row[0].imshow(image[channel], cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"{title}: {_CHANNELS[channel]}", fontsize=9)
        row[1].imshow(image[channel], cmap="gray", vmin=0, vmax=1)
        shown = row[1].imshow(cam, cmap="jet", vmin=0, vmax=1, alpha=alpha)
        row[1].set_title(f"{title}: Grad-CAM", fontsize=9)
        fig.colorbar(shown, ax=row[1], fraction=0.046, pad=0.02)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig
