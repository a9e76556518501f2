"""Test-set evaluation laid out like the paper's Table 1.

Rows: the MAE (years) of each sex x BMI group, of each BMI group over both
sexes, of each sex over all BMI groups and of the whole test set; then the
number of training samples, the runtime per epoch and the inference time per
sample. Columns: the "Mean Pred." baseline, then one per `MethodResult`, in
the order given, so further methods (the 2.5D model) are just more records.
A model given to the run (model.checkpoint) was trained elsewhere: its
training costs read "given checkpoint", and a cohort without a train split
has no mean training age, so "Mean Pred." is N/A; notes under the table say so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ageatlas.age.bias import MIN_TRACKING_SLOPE, BiasCorrection
from ageatlas.core.vocabulary import BMI_GROUPS, SEXES

BASELINE = "Mean Pred."
BOTH_SEXES = "M+F"
OVERALL = "Overall"
MAE = "MAE"
TRAINING_SAMPLES = "Nr. training samples"
RUNTIME = "Runtime/epoch (min)"
RUNTIME_SD = "Runtime/epoch sd (min)"
INFERENCE = "Inference/sample (s)"
GIVEN_CELL = "given checkpoint"
KEY_COLUMNS = ["Metric", "Category", "Sex", "n"]
COHORT_COLUMNS = ("eid", "age", "sex", "bmi_group", "split")


@dataclass
class MethodResult:
    """One column of Table 1: a method's test predictions and its costs."""

    name: str  # column header, e.g. "3D" or "3D (bias-corrected)"
    predictions: pd.DataFrame  # eid plus the prediction column (test set; other splits are ignored)
    training_samples: int | None = None
    epoch_seconds: list[float] | None = None  # the training metrics.tsv `seconds` column
    inference_seconds_per_sample: float | None = None
    column: str = "predicted"  # e.g. "corrected" for a bias-corrected table
    caveat: str | None = (
        None  # why the column's MAEs do not measure the method (shown under the table)
    )
    given: str | None = None  # the checkpoint the run was given (trained elsewhere), if any


def read_epoch_seconds(metrics_tsv: str | Path) -> list[float]:
    """Seconds per epoch from a training metrics.tsv (its ``seconds`` column)."""
    metrics = pd.read_csv(metrics_tsv, sep="\t")
    if "seconds" not in metrics.columns:
        raise ValueError(f"{metrics_tsv} has no 'seconds' column; has {list(metrics.columns)}")
    return [float(s) for s in metrics["seconds"].dropna()]


def model_columns(
    name: str,
    predictions: pd.DataFrame,
    metrics_tsv: str | Path | None,
    timing_json: str | Path,
    training_samples: int | None,
    correction_json: str | Path | None = None,
    given: str | None = None,
) -> list[MethodResult]:
    """A model's two columns, as predicted and "(bias-corrected)", with the costs from its rules'
    records.

    `predictions` has eid, predicted and corrected (the bias rule's table);
    `metrics_tsv` is the training metrics, `timing_json` the prediction
    rule's timing (``seconds_per_sample``), `correction_json` the fitted
    correction: when the model does not track age, the corrected column
    carries a caveat instead of passing for a result. A ``given`` checkpoint
    (trained elsewhere) has no metrics and no training samples here.
    """
    timing = json.loads(Path(timing_json).read_text())
    costs = dict(
        training_samples=None if given or training_samples is None else int(training_samples),
        epoch_seconds=None if given or metrics_tsv is None else read_epoch_seconds(metrics_tsv),
        inference_seconds_per_sample=timing["seconds_per_sample"],
        given=given,
    )
    corrected = f"{name} (bias-corrected)"
    return [
        MethodResult(name, predictions, column="predicted", **costs),
        MethodResult(
            corrected,
            predictions,
            column="corrected",
            caveat=_correction_caveat(name, correction_json),
            **costs,
        ),
    ]


def _correction_caveat(name: str, correction_json: str | Path | None) -> str | None:
    if correction_json is None:
        return None
    correction = BiasCorrection.from_json(correction_json)
    if correction.tracks_age:
        return None
    return (
        f"{name} (bias-corrected) does not measure the {name} model: its validation "
        f"predictions rise {correction.age_slope:.2f} years per year of age "
        f"(below {MIN_TRACKING_SLOPE}), so it has not "
        f"learned age and the {correction.method} correction largely returns chronological age. "
        f"Compare the uncorrected column."
    )


def _test_rows(cohort: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in COHORT_COLUMNS if c not in cohort.columns]
    if missing:
        raise ValueError(f"cohort table lacks column(s) {missing}; has {list(cohort.columns)}")
    test = cohort[cohort["split"] == "test"].copy()
    if test.empty:
        raise ValueError("the cohort table has no participants with split == 'test'")
    # A participant outside the six groups would count in "Overall" rows only.
    odd = test[~test["sex"].isin(SEXES) | ~test["bmi_group"].isin(BMI_GROUPS)]
    if not odd.empty:
        raise ValueError(
            f"{len(odd)} test participants have sex not in {SEXES} or bmi_group not in "
            f"{BMI_GROUPS}, e.g. eid {odd['eid'].iloc[0]}"
        )
    test["eid"] = test["eid"].astype(str)
    return test


def mean_prediction(cohort: pd.DataFrame, by=("sex", "bmi_group")) -> pd.DataFrame:
    """Baseline: predict each test participant the mean TRAINING age of its group.

    The paper's caption says the baseline "always predicts the mean age of the
    respective subgroup"; we take that mean over the training split, so no
    test age leaks into the baseline. ``by`` names the grouping columns: the
    default is the sex x BMI group; ``("sex",)``, ``("bmi_group",)`` or ``()``
    (everybody) give the baselines of Table 1's "Overall" rows. A group
    without training participants gets NaN. Returns eid and predicted for
    every test participant, in cohort order.
    """
    by = list(by)
    test = _test_rows(cohort)
    train = cohort[cohort["split"] == "train"]
    if train.empty:
        raise ValueError(
            "the cohort table has no participants with split == 'train' for the mean baseline"
        )
    if not by:
        return pd.DataFrame(
            {"eid": test["eid"].to_numpy(), "predicted": float(train["age"].mean())}
        )
    means = train.groupby(by)["age"].mean().rename("predicted").reset_index()
    merged = test[["eid", *by]].merge(means, on=by, how="left")
    return merged[["eid", "predicted"]].reset_index(drop=True)


def _rows() -> list[tuple[str, str, str | None, str | None]]:
    """(category, sex label, sex filter, bmi filter) for each MAE row, in table order."""
    rows = []
    for bmi in BMI_GROUPS:
        rows += [(bmi.capitalize(), sex, sex, bmi) for sex in SEXES]
        rows.append((bmi.capitalize(), BOTH_SEXES, None, bmi))
    rows += [(OVERALL, sex, sex, None) for sex in SEXES]
    rows.append((OVERALL, BOTH_SEXES, None, None))
    return rows


def _method_predictions(test: pd.DataFrame, method: MethodResult) -> pd.Series:
    """The method's prediction for every test participant, aligned with ``test``."""
    preds = method.predictions
    if "eid" not in preds.columns or method.column not in preds.columns:
        raise ValueError(
            f"predictions of {method.name!r} need columns 'eid' and {method.column!r}; "
            f"have {list(preds.columns)}"
        )
    preds = preds.assign(eid=preds["eid"].astype(str))
    preds = preds[preds["eid"].isin(test["eid"])]
    if preds["eid"].duplicated().any():
        raise ValueError(
            f"predictions of {method.name!r} list eid "
            f"{preds.loc[preds['eid'].duplicated(), 'eid'].iloc[0]} twice"
        )
    values = test["eid"].map(preds.set_index("eid")[method.column])
    # Skipping absent participants would compare methods on different people.
    if values.isna().any():
        absent = test.loc[values.isna(), "eid"]
        raise ValueError(
            f"{method.name!r} has no prediction for {len(absent)} of {len(test)} "
            f"test participants, e.g. eid {absent.iloc[0]}"
        )
    return values.astype(float)


def mae(age: pd.Series, predicted: pd.Series) -> float:
    """Mean absolute error in years; NaN for no participants."""
    # NaN (a baseline group without training peers) stays NaN: never skipped.
    return (
        float(np.abs(predicted.to_numpy(float) - age.to_numpy(float)).mean())
        if len(age)
        else math.nan
    )


def _selector(test: pd.DataFrame, sex: str | None, bmi: str | None) -> pd.Series:
    mask = pd.Series(True, index=test.index)
    if sex is not None:
        mask &= test["sex"] == sex
    if bmi is not None:
        mask &= test["bmi_group"] == bmi
    return mask


def _has_train(cohort: pd.DataFrame) -> bool:
    return bool((cohort["split"] == "train").any())


def _baseline_column(cohort: pd.DataFrame, test: pd.DataFrame) -> list[float]:
    """Baseline MAE per row, the mean taken over that row's own population; NaN without a train
    split (a given model's cohort)."""
    if not _has_train(cohort):
        return [math.nan] * len(_rows())
    values = []
    for _, _, sex, bmi in _rows():
        by = [c for c, f in (("sex", sex), ("bmi_group", bmi)) if f is not None]
        pred = mean_prediction(cohort, by)["predicted"]
        pred.index = test.index
        mask = _selector(test, sex, bmi)
        values.append(mae(test.loc[mask, "age"], pred[mask]))
    return values


def _cost_rows(method: MethodResult | None) -> list[float]:
    """Training samples, runtime/epoch mean and sd (min), inference/sample (s); NaN when absent."""
    if method is None:
        return [math.nan] * 4
    seconds = np.asarray(method.epoch_seconds or [], dtype=float)
    seconds = seconds[np.isfinite(seconds)]  # an epoch without a timing is not a zero-minute epoch
    mean = seconds.mean() / 60 if seconds.size else math.nan
    sd = seconds.std(ddof=1) / 60 if seconds.size > 1 else math.nan
    samples = math.nan if method.training_samples is None else float(method.training_samples)
    inference = (
        math.nan
        if method.inference_seconds_per_sample is None
        else float(method.inference_seconds_per_sample)
    )
    return [samples, mean, sd, inference]


def table1(cohort: pd.DataFrame, methods: list[MethodResult]) -> pd.DataFrame:
    """Table 1 as numbers: columns Metric, Category, Sex, n, "Mean Pred.", then each method.

    MAE rows are on the test split. For the baseline, each row predicts the
    mean training age of that row's population: its sex x BMI group, its sex
    ("Overall F/M"), its BMI group (M+F rows), everybody ("Overall M+F").
    Cost rows come from the `MethodResult` records; NaN where unknown (always
    for the baseline). Runtime is split into a mean row and an sd row.
    """
    names = [BASELINE, *(m.name for m in methods)]
    if len(set(names)) != len(names) or set(names) & set(KEY_COLUMNS):
        raise ValueError(
            f"method names must be unique and differ from {[BASELINE, *KEY_COLUMNS]}: {names}"
        )
    test = _test_rows(cohort)
    rows = _rows()
    key = [(MAE, cat, label, int(_selector(test, sex, bmi).sum())) for cat, label, sex, bmi in rows]
    key += [
        (metric, "-", "-", None) for metric in (TRAINING_SAMPLES, RUNTIME, RUNTIME_SD, INFERENCE)
    ]
    table = pd.DataFrame(key, columns=KEY_COLUMNS)
    table["n"] = table["n"].astype("Int64")
    table[BASELINE] = _baseline_column(cohort, test) + _cost_rows(None)
    for method in methods:
        pred = _method_predictions(test, method)
        maes = [
            mae(test.loc[m, "age"], pred[m]) for m in (_selector(test, s, b) for _, _, s, b in rows)
        ]
        table[method.name] = maes + _cost_rows(method)
    table.attrs["caveats"] = {m.name: m.caveat for m in methods if m.caveat}
    table.attrs["given"] = {m.name: m.given for m in methods if m.given}
    notes = []
    if not _has_train(cohort):
        notes.append(f"{BASELINE} is N/A: the cohort has no train split, so no mean training age.")
    for given in dict.fromkeys(m.given for m in methods if m.given):
        names = " and ".join(m.name for m in methods if m.given == given)
        notes.append(
            f"{names}: the given checkpoint {given}, trained elsewhere; its training samples and "
            "runtime are not known here."
        )
    table.attrs["notes"] = notes
    return table


def overall_mae(cohort: pd.DataFrame, method: MethodResult) -> dict[str, float]:
    """Whole-test-set MAE of a method and of the baseline (mean training age of everybody).

    The baseline is the one in Table 1's "Overall M+F" cell, so the workflow's
    check ("model MAE <= half the baseline") agrees with the table.
    """
    test = _test_rows(cohort)
    pred = _method_predictions(test, method)
    if not _has_train(cohort):
        return {"mae": mae(test["age"], pred), "baseline_mae": math.nan, "n": len(test)}
    base = mean_prediction(cohort, by=())["predicted"]
    base.index = test.index
    return {"mae": mae(test["age"], pred), "baseline_mae": mae(test["age"], base), "n": len(test)}


# ---- writing -------------------------------------------------------------


def _method_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in KEY_COLUMNS]


def _best(values: pd.Series) -> pd.Series:
    """Which cells hold the row minimum (ties all win); none if < 2 known values."""
    known = values.dropna()
    if len(known) < 2:
        return pd.Series(False, index=values.index)
    return values.notna() & np.isclose(values.astype(float), known.min())


def _cell(value: float, digits: int, bold: bool, sd: float = math.nan) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "N/A"
    text = f"{value:,.{digits}f}"
    if not math.isnan(sd):
        text += f" ± {sd:.{digits}f}"
    return f"**{text}**" if bold else text


def _markdown_rows(table: pd.DataFrame) -> list[list[str]]:
    methods = _method_columns(table)
    by_metric = table.set_index("Metric", drop=False)
    out = []
    previous = (None, None)
    caveats = table.attrs.get("caveats", {})
    for _, row in table[table["Metric"] == MAE].iterrows():
        # A caveated column (a correction of a model that did not learn) never wins a row.
        best = _best(row[methods].astype(float).where([m not in caveats for m in methods]))
        metric = "" if previous[0] == MAE else MAE
        category = "" if previous[1] == row["Category"] else row["Category"]
        cells = [_cell(row[m], 3, best[m]) + (" †" if m in caveats else "") for m in methods]
        out.append([metric, category, row["Sex"], str(row["n"]), *cells])
        previous = (MAE, row["Category"])
    given = table.attrs.get("given", {})
    samples = by_metric.loc[TRAINING_SAMPLES, methods].astype(float)
    cells = [GIVEN_CELL if m in given else _cell(samples[m], 0, False) for m in methods]
    out.append([TRAINING_SAMPLES, "-", "-", "-", *cells])
    mean, sd = (by_metric.loc[k, methods].astype(float) for k in (RUNTIME, RUNTIME_SD))
    best = _best(mean)
    cells = [GIVEN_CELL if m in given else _cell(mean[m], 2, best[m], sd[m]) for m in methods]
    out.append([RUNTIME, "-", "-", "-", *cells])
    inference = by_metric.loc[INFERENCE, methods].astype(float)
    best = _best(inference)
    out.append([INFERENCE, "-", "-", "-", *[_cell(inference[m], 3, best[m]) for m in methods]])
    return out


def to_markdown(table: pd.DataFrame) -> str:
    """The table laid out like the paper: grouped labels, best (lowest) value per row in bold."""
    header = [*KEY_COLUMNS, *_method_columns(table)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in _markdown_rows(table)]
    caption = (
        "MAE in years on the test set by sex and BMI group; n = test participants. "
        f"{BASELINE} predicts the mean training age of each row's population. "
        "Best (lowest) value per row in bold."
    )
    notes = "".join(f"\n† {text}\n" for text in table.attrs.get("caveats", {}).values())
    notes += "".join(f"\n{text}\n" for text in table.attrs.get("notes", []))
    return "\n".join(lines) + "\n\n" + caption + "\n" + notes


def write_table1(table: pd.DataFrame, tsv_path: str | Path, md_path: str | Path) -> None:
    """TSV with full-precision numbers ("N/A" when unknown) and the Markdown table."""
    table.to_csv(tsv_path, sep="\t", index=False, na_rep="N/A", float_format="%.6g")
    Path(md_path).write_text(to_markdown(table))
