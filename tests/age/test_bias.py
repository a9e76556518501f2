import math

import numpy as np
import pandas as pd
import pytest

from ageatlas.age import bias


def _planted(n=50, slope=0.6, intercept=22.0, noise=0.0, seed=0):
    """Predictions that regress towards the mean: p = slope * y + intercept (+ noise)."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(46, 81, n)
    return age, slope * age + intercept + rng.normal(0, noise, n)


def test_delta_recovers_planted_bias_exactly():
    age, pred = _planted()
    corr = bias.fit(age, pred, "delta")
    # p - y = (0.6 - 1) y + 22
    assert corr.slope == pytest.approx(-0.4, abs=1e-9)
    assert corr.intercept == pytest.approx(22.0, abs=1e-7)
    assert corr.n == 50 and corr.r2 == pytest.approx(1.0)
    np.testing.assert_allclose(corr.apply(pred, age), age, atol=1e-7)


def test_cole_recovers_planted_bias_without_test_ages():
    age, pred = _planted()
    corr = bias.fit(age, pred, "cole")
    assert corr.slope == pytest.approx(0.6, abs=1e-9)
    assert corr.intercept == pytest.approx(22.0, abs=1e-7)
    np.testing.assert_allclose(corr.apply(pred), age, atol=1e-7)


def test_delta_gap_uncorrelated_with_age_on_noisy_test_data():
    val_age, val_pred = _planted(n=400, noise=3.0, seed=1)
    test_age, test_pred = _planted(n=400, noise=3.0, seed=2)
    corr = bias.fit(val_age, val_pred, "delta")
    assert np.corrcoef(test_age, test_pred - test_age)[0, 1] < -0.7  # the bias is there before
    table = bias.correct_table(
        pd.DataFrame({"eid": range(400), "split": "test", "age": test_age, "predicted": test_pred}),
        corr,
    )
    assert abs(np.corrcoef(test_age, table["gap"])[0, 1]) < 0.1
    np.testing.assert_allclose(table["gap"], table["corrected"] - table["age"])
    assert list(table.columns[:4]) == ["eid", "split", "age", "predicted"]


def test_fit_table_uses_validation_rows_only():
    age, pred = _planted(n=30)
    frame = pd.DataFrame({"eid": range(30), "split": "val", "age": age, "predicted": pred})
    # Test rows with a wildly different relation must not move the fit.
    test = pd.DataFrame({"eid": range(30, 60), "split": "test", "age": age, "predicted": 100 - age})
    corr = bias.fit_table(pd.concat([frame, test]), "delta")
    assert corr.slope == pytest.approx(-0.4, abs=1e-9) and corr.n == 30


def test_json_round_trip(tmp_path):
    age, pred = _planted(noise=2.0)
    for method in bias.METHODS:
        corr = bias.fit(age, pred, method)
        corr.to_json(tmp_path / f"{method}.json")
        assert bias.BiasCorrection.from_json(tmp_path / f"{method}.json") == corr


def test_json_round_trip_keeps_nan_fields(tmp_path):
    corr = bias.BiasCorrection("cole", 0.5, 20.0, 10, 0.9)
    corr.to_json(tmp_path / "c.json")
    assert '"slope_pvalue": null' in (tmp_path / "c.json").read_text()
    back = bias.BiasCorrection.from_json(tmp_path / "c.json")
    assert math.isnan(back.slope_pvalue) and back.slope == 0.5 and back.method == "cole"


@pytest.mark.parametrize(
    "age, pred, method, message",
    [
        ([50, 60, 70], [50, 60, 70], "median", "unknown bias correction method"),
        ([50, 60], [51, 59], "delta", "at least 3"),
        ([60, 60, 60], [58, 61, 62], "delta", "cannot be fitted"),
        ([50, 60, 70], [65, 65.001, 65], "cole", "divide by ~0"),
        ([50, np.nan, 70], [50, 60, 70], "delta", "finite"),
        ([50, 60, 70], [50, 60], "delta", "3 ages but 2 predictions"),
    ],
)
def test_fit_errors(age, pred, method, message):
    with pytest.raises(ValueError, match=message):
        bias.fit(age, pred, method)


def test_delta_apply_needs_age():
    corr = bias.fit(*_planted(), "delta")
    with pytest.raises(ValueError, match="needs the chronological age"):
        corr.apply([60.0, 70.0])


def test_correct_table_requires_columns():
    corr = bias.fit(*_planted(), "cole")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['age'\]"):
        bias.correct_table(pd.DataFrame({"eid": [1], "predicted": [60.0]}), corr)


@pytest.mark.parametrize("method", ["delta", "cole"])
def test_age_slope_is_how_much_predictions_follow_age(method):
    age, pred = _planted(slope=0.6)
    corr = bias.fit(age, pred, method)
    assert corr.age_slope == pytest.approx(0.6, abs=1e-9)
    assert corr.tracks_age


def test_a_model_that_predicts_the_mean_does_not_track_age():
    # a model that has not learned: ~constant output. Delta would "correct" it to chronological age.
    age, pred = _planted(slope=0.02, intercept=62.0, noise=0.1)
    corr = bias.fit(age, pred, "delta")
    assert corr.age_slope < bias.MIN_TRACKING_SLOPE and not corr.tracks_age
    assert np.abs(corr.apply(pred, age) - age).mean() < 0.2  # the misleading near-perfect score


def test_given_coefficients_are_applied_as_they_are(tmp_path):
    age, pred = _planted()
    bias.fit(age, pred, "cole").to_json(tmp_path / "given.json")
    # Only test rows (a given model's cohort): nothing to fit on, and the config's method is
    # not the given one's.
    table = pd.DataFrame({"split": "test", "age": age, "predicted": pred})
    correction, source = bias.given_or_fitted(table, "delta", given=tmp_path / "given.json")
    assert correction.method == "cole" and correction.slope == pytest.approx(0.6)
    assert source["source"] == "given" and source["path"] == str(tmp_path / "given.json")
    assert source["sha256"] and source["method"] == "cole"
    with pytest.raises(ValueError, match="no rows with split == 'val'"):
        bias.given_or_fitted(table, "delta")
    fitted, source = bias.given_or_fitted(table.assign(split="val"), "delta")
    assert fitted.method == "delta" and source == {
        "source": "fitted here",
        "split": "val",
        "method": "delta",
        "n": 50,
    }


def test_coefficients_files_that_are_not_corrections_are_named(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"method": "delta", "slope": -0.4, "intercept": 22}')
    with pytest.raises(
        ValueError, match=r"c.json is not a bias correction: it lacks \['n', 'r2'\]"
    ):
        bias.BiasCorrection.from_json(path)
    path.write_text(
        '{"method": "delta", "slope": -0.4, "intercept": 22, "n": 5, "r2": 0.5, "x": 1}'
    )
    assert bias.BiasCorrection.from_json(path).n == 5  # unknown keys are ignored
