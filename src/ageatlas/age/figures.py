"""Figures. Written with matplotlib's Agg backend: no display is needed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ageatlas.age.evaluate import mae  # noqa: E402
from ageatlas.core.vocabulary import BMI_GROUPS, SEXES  # noqa: E402

# ---- age prediction scatter plots (paper Figures 7 and 8) ------------------

SCATTER_COLUMNS = ("eid", "age", "predicted", "corrected", "sex", "bmi_group")
_SEX_NAMES = {"F": "Female", "M": "Male"}


def _check_scatter_frame(df) -> None:
    missing = [c for c in SCATTER_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"scatter plot table lacks column(s) {missing}; has {list(df.columns)}")
    if len(df) == 0:
        raise ValueError("scatter plot table has no rows")


def _age_limits(df, columns) -> tuple[float, float]:
    """One range for both axes of every panel, so panels compare and the identity is the
    diagonal."""
    values = np.concatenate([df[c].to_numpy(float) for c in columns])
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    pad = max(1.0, 0.03 * (hi - lo))
    return lo - pad, hi + pad


def _age_scatter(
    ax, age, predicted, limits, title: str, ylabel: str = "Predicted age (years)"
) -> None:
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


def scatter_before_after(df, path: str | Path):
    """Figure 7: test predictions before (left) and after (right) bias correction."""
    _check_scatter_frame(df)
    limits = _age_limits(df, ("age", "predicted", "corrected"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    panels = (
        (axes[0], "predicted", "Before", "Predicted age (years)"),
        (axes[1], "corrected", "After", "Corrected predicted age (years)"),
    )
    for ax, column, label, ylabel in panels:
        title = f"{label} bias correction: MAE {mae(df['age'], df[column]):.2f} years (n={len(df)})"
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
    fig, axes = plt.subplots(len(SEXES), len(BMI_GROUPS), figsize=(12, 8.5), squeeze=False)
    for r, sex in enumerate(SEXES):
        for c, bmi in enumerate(BMI_GROUPS):
            group = df[(df["sex"] == sex) & (df["bmi_group"] == bmi)]
            name = f"{_SEX_NAMES[sex]}, {bmi}"
            error = (
                f"MAE {mae(group['age'], group['corrected']):.2f} years"
                if len(group)
                else "no participants"
            )
            title = f"{name}: {error} (n={len(group)})"
            _age_scatter(
                axes[r, c],
                group["age"],
                group["corrected"],
                limits,
                title,
                "Corrected predicted age (years)",
            )
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.suptitle("Bias-corrected predicted vs chronological age (test set)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig
