"""Bias correction of predicted age, fitted on the validation set only.

Age models regress towards the training mean: the young are predicted too
old and the old too young. The paper corrects this "using the real age of the
validation data as a covariate" (Appendix B) but publishes no code, so the
two standard linear corrections from the brain-age literature are offered,
with chronological age y and prediction p:

- ``delta`` (Le 2018, Smith 2019, Beheshti 2019): fit ``p - y = a*y + b``;
  corrected ``p' = p - (a*y + b)``. Needs y at test time, as the paper does.
- ``cole`` (Cole 2018, de Lange 2020): fit ``p = a*y + b``; corrected
  ``p' = (p - b) / a``. Needs no y at test time.

Both are ordinary least squares (statsmodels). Fitting on the test set would
leak its ages into the evaluation, hence `fit_table` picks the validation rows.
A run with a given model may instead apply the coefficients fitted by the run
that trained it (`given_or_fitted`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm

from ageatlas.core.provenance import sha256_file

METHODS = ("delta", "cole")
MIN_SAMPLES = 3
# Below this slope, Cole's division by the slope blows residuals up >100-fold:
# the model barely tracks age and the "correction" would be noise.
MIN_COLE_SLOPE = 0.01
# Below this, the validation predictions rise less than 0.1 year per year of
# age: the model has not learned age, and the delta correction, which adds
# back (1 - slope) of chronological age, would score it as nearly perfect.
MIN_TRACKING_SLOPE = 0.1


@dataclass
class BiasCorrection:
    """A fitted linear bias correction; `apply` it to new predictions."""

    method: str
    slope: float
    intercept: float
    n: int
    r2: float
    slope_stderr: float = math.nan
    intercept_stderr: float = math.nan
    slope_pvalue: float = math.nan
    age_min: float = math.nan  # the validation ages it was fitted on, to spot extrapolation
    age_max: float = math.nan

    @property
    def age_slope(self) -> float:
        """Years the validation predictions rise per year of chronological age."""
        return 1.0 + self.slope if self.method == "delta" else self.slope

    @property
    def tracks_age(self) -> bool:
        """Whether the model's predictions follow age enough for a correction to mean anything."""
        return self.age_slope >= MIN_TRACKING_SLOPE

    def apply(self, predicted, age=None) -> np.ndarray:
        """Corrected predictions; ``age`` (chronological) is required for "delta"."""
        p = np.asarray(predicted, dtype=float)
        if self.method == "cole":
            return (p - self.intercept) / self.slope
        if self.method == "delta":
            if age is None:
                raise ValueError(
                    "the 'delta' bias correction needs the chronological age of each participant "
                    "(age=...)"
                )
            y = np.asarray(age, dtype=float)
            if y.shape != p.shape:
                raise ValueError(f"age has shape {y.shape} but predicted has shape {p.shape}")
            return p - (self.slope * y + self.intercept)
        raise ValueError(
            f"unknown bias correction method {self.method!r}; expected one of {METHODS}"
        )

    def to_json(self, path: str | Path) -> None:
        # NaN is not JSON: store it as null (a noiseless fit has no p-value).
        values = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }
        Path(path).write_text(json.dumps(values, indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> BiasCorrection:
        """A correction written by `to_json`; keys it does not know are ignored."""
        stored = json.loads(Path(path).read_text())
        if not isinstance(stored, dict):
            raise ValueError(f"{path} holds no bias correction (a JSON object)")
        known = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [key for key in required if stored.get(key) is None]
        if missing:
            raise ValueError(f"{path} is not a bias correction: it lacks {missing}")
        fields_ = {key: value for key, value in stored.items() if key in known}
        for key in (
            "slope",
            "intercept",
            "r2",
            "slope_stderr",
            "intercept_stderr",
            "slope_pvalue",
            "age_min",
            "age_max",
        ):
            if key in fields_:
                fields_[key] = math.nan if fields_[key] is None else float(fields_[key])
        correction = cls(**fields_)
        if correction.method not in METHODS:
            raise ValueError(
                f"{path}: unknown bias correction method {correction.method!r}; "
                f"expected one of {METHODS}"
            )
        return correction


def _as_pair(age, predicted) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(age, dtype=float).ravel()
    p = np.asarray(predicted, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{y.size} ages but {p.size} predictions")
    if not (np.isfinite(y).all() and np.isfinite(p).all()):
        raise ValueError("age and predicted must be finite (found NaN or inf)")
    if y.size < MIN_SAMPLES:
        raise ValueError(
            f"bias correction needs at least {MIN_SAMPLES} validation samples, got {y.size}"
        )
    if np.ptp(y) == 0:
        raise ValueError(
            f"all {y.size} validation ages equal {y[0]:g}: the bias slope cannot be fitted"
        )
    return y, p


def fit(age, predicted, method: str = "delta") -> BiasCorrection:
    """Fit a bias correction on validation ages and predictions (OLS)."""
    if method not in METHODS:
        raise ValueError(f"unknown bias correction method {method!r}; expected one of {METHODS}")
    y, p = _as_pair(age, predicted)
    target = p - y if method == "delta" else p
    with np.errstate(divide="ignore", invalid="ignore"):  # a noiseless fit has zero residuals
        result = sm.OLS(target, sm.add_constant(y)).fit()
    intercept, slope = (float(v) for v in result.params)
    if method == "cole" and abs(slope) < MIN_COLE_SLOPE:
        raise ValueError(
            f"predictions barely depend on age (slope {slope:.4g} < {MIN_COLE_SLOPE}): "
            "the 'cole' correction would divide by ~0; use 'delta' or a better model"
        )
    return BiasCorrection(
        method=method,
        slope=slope,
        intercept=intercept,
        n=int(y.size),
        r2=float(result.rsquared),
        slope_stderr=float(result.bse[1]),
        intercept_stderr=float(result.bse[0]),
        slope_pvalue=float(result.pvalues[1]),
        age_min=float(y.min()),
        age_max=float(y.max()),
    )


def _require(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; has {list(frame.columns)}")


def fit_table(
    predictions: pd.DataFrame, method: str = "delta", split: str = "val"
) -> BiasCorrection:
    """Fit on the rows of one split (the validation set) of a predictions table."""
    _require(predictions, ("split", "age", "predicted"), "predictions table")
    rows = predictions[predictions["split"] == split]
    if rows.empty:
        raise ValueError(f"no rows with split == {split!r} to fit the bias correction on")
    return fit(rows["age"], rows["predicted"], method)


def given_or_fitted(
    predictions: pd.DataFrame, method: str = "delta", given: str | Path | None = None
) -> tuple[BiasCorrection, dict]:
    """The correction to apply, and where it came from (for the provenance sidecars).

    ``given`` (config bias.coefficients, a `to_json` file) is applied as it
    is, with its own method; without it, one is fitted on the validation rows.
    """
    if given:
        correction = BiasCorrection.from_json(given)
        source = {
            "source": "given",
            "path": os.path.abspath(given),
            "sha256": sha256_file(given),
            "method": correction.method,
            "n": correction.n,
        }
    else:
        correction = fit_table(predictions, method)
        source = {"source": "fitted here", "split": "val", "method": method, "n": correction.n}
    return correction, source


def correct_table(predictions: pd.DataFrame, correction: BiasCorrection) -> pd.DataFrame:
    """Add ``corrected`` and ``gap`` (corrected - age) to a predictions table.

    The gap is the bias-corrected age gap that later classifies accelerated
    and decelerated ageing. All other columns are kept.
    """
    _require(predictions, ("age", "predicted"), "predictions table")
    out = predictions.copy()
    out["corrected"] = correction.apply(
        out["predicted"].to_numpy(float), out["age"].to_numpy(float)
    )
    out["gap"] = out["corrected"] - out["age"].astype(float)
    return out
