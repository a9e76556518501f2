"""Figures. Written with matplotlib's Agg backend: no display is needed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _upright(plane: np.ndarray) -> np.ndarray:
    """A (horizontal, superior) plane of a RAS volume turned so head is up."""
    return np.flipud(plane.T)


def stitch_preview(images: dict[str, np.ndarray], spacing, path: str | Path, title: str = "") -> None:
    """Coronal and sagittal mid-planes of each stitched contrast, to spot seams and swaps.

    Volumes are in canonical RAS voxel order (i: left-right, j: posterior-
    anterior, k: inferior-superior), as `ageatlas.stitch` writes them;
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
        views = ((axes[0, 2 * col], coronal, "coronal", sz / sx), (axes[0, 2 * col + 1], sagittal, "sagittal", sz / sy))
        for ax, plane, view, aspect in views:
            ax.imshow(_upright(plane), cmap="gray", vmin=0, vmax=hi, aspect=aspect)
            ax.set_title(f"{name} {view}", fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---- age prediction scatter plots (paper Figures 7 and 8) ------------------

SCATTER_COLUMNS = ("eid", "age", "predicted", "corrected", "sex", "bmi_group")
_SEXES = ("F", "M")
_BMI_GROUPS = ("healthy", "overweight", "obese")
_SEX_NAMES = {"F": "Female", "M": "Male"}


def _check_scatter_frame(df) -> None:
    missing = [c for c in SCATTER_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"scatter plot table lacks column(s) {missing}; has {list(df.columns)}")
    if len(df) == 0:
        raise ValueError("scatter plot table has no rows")


def _age_limits(df, columns) -> tuple[float, float]:
    """One range for both axes of every panel, so panels compare and the identity is the diagonal."""
    values = np.concatenate([df[c].to_numpy(float) for c in columns])
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    pad = max(1.0, 0.03 * (hi - lo))
    return lo - pad, hi + pad


def _age_scatter(ax, age, predicted, limits, title: str, ylabel: str = "Predicted age (years)") -> None:
    """Predicted vs chronological age with the identity line and a least-squares trend."""
    age = np.asarray(age, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    ax.plot(limits, limits, color="0.4", lw=1, ls="--", label="identity")
    ax.scatter(age, predicted, s=8, alpha=0.5, edgecolors="none")
    if age.size >= 2 and np.ptp(age) > 0:  # the trend makes any residual bias visible
        slope, intercept = np.polyfit(age, predicted, 1)
        xs = np.asarray(limits)
        ax.plot(xs, slope * xs + intercept, color="tab:red", lw=1, label="linear fit")
    ax.set_xlim(limits)
    ax.set_ylim(limits)
    ax.set_aspect("equal")
    ax.set_xlabel("Chronological age (years)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def _mae(age, predicted) -> float:
    return float(np.mean(np.abs(np.asarray(predicted, float) - np.asarray(age, float))))


def scatter_before_after(df, path: str | Path):
    """Figure 7: test predictions before (left) and after (right) bias correction."""
    _check_scatter_frame(df)
    limits = _age_limits(df, ("age", "predicted", "corrected"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    panels = ((axes[0], "predicted", "Before", "Predicted age (years)"), (axes[1], "corrected", "After", "Corrected predicted age (years)"))
    for ax, column, label, ylabel in panels:
        title = f"{label} bias correction: MAE {_mae(df['age'], df[column]):.2f} years (n={len(df)})"
        _age_scatter(ax, df["age"], df[column], limits, title, ylabel)
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def scatter_by_group(df, path: str | Path):
    """Figure 8: bias-corrected vs chronological age, rows F/M, columns healthy/overweight/obese."""
    _check_scatter_frame(df)
    limits = _age_limits(df, ("age", "corrected"))
    fig, axes = plt.subplots(len(_SEXES), len(_BMI_GROUPS), figsize=(12, 8.5), squeeze=False)
    for r, sex in enumerate(_SEXES):
        for c, bmi in enumerate(_BMI_GROUPS):
            group = df[(df["sex"] == sex) & (df["bmi_group"] == bmi)]
            name = f"{_SEX_NAMES[sex]}, {bmi}"
            mae = f"MAE {_mae(group['age'], group['corrected']):.2f} years" if len(group) else "no participants"
            title = f"{name}: {mae} (n={len(group)})"
            _age_scatter(axes[r, c], group["age"], group["corrected"], limits, title, "Corrected predicted age (years)")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.suptitle("Bias-corrected predicted vs chronological age (test set)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


# ---- 2.5D baseline: Grad-CAM over the projections (paper Figure 9) ------

_CHANNELS = ("water", "fat")


def projection_cam_figure(images, cams, titles, path: str | Path, channel: int = 0, alpha: float = 0.45):
    """Figure 9: one row per participant, its projection (water by default) and the Grad-CAM over it.

    ``images`` are (2, H, W) projections, ``cams`` (H, W) maps in [0, 1].
    """
    if not len(images) == len(cams) == len(titles) or not len(images):
        raise ValueError(f"need as many images, maps and titles (>= 1): {len(images)}, {len(cams)}, {len(titles)}")
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
