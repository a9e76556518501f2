import math

import numpy as np
import pandas as pd
import pytest

from ageatlas.age import evaluate, figures
from ageatlas.age.evaluate import MethodResult

GROUPS = [(s, b) for s in ("F", "M") for b in ("healthy", "overweight", "obese")]


def _cohort(per_group=None, seed=0):
    """Each sex x BMI group: 6 train, 2 val, 4 test participants (or per_group counts)."""
    per_group = per_group or {"train": 6, "val": 2, "test": 4}
    rng = np.random.default_rng(seed)
    rows = []
    for sex, bmi in GROUPS:
        for split, count in per_group.items():
            for _ in range(count):
                rows.append(
                    {
                        "sex": sex,
                        "bmi_group": bmi,
                        "split": split,
                        "age": float(rng.integers(46, 82)),
                    }
                )
    cohort = pd.DataFrame(rows)
    cohort.insert(0, "eid", range(1000001, 1000001 + len(cohort)))
    cohort["bmi"] = cohort["bmi_group"].map({"healthy": 22.0, "overweight": 27.0, "obese": 33.0})
    cohort["group"] = cohort["sex"] + "_" + cohort["bmi_group"]
    return cohort


def _offset(cohort, offset, name="3D", **costs):
    test = cohort[cohort["split"] == "test"]
    # eids as strings, as a predictions TSV read back may give them
    preds = pd.DataFrame({"eid": test["eid"].astype(str), "predicted": test["age"] + offset})
    return MethodResult(name, preds, **costs)


def test_table_rows_counts_and_method_maes():
    cohort = _cohort()
    table = evaluate.table1(cohort, [_offset(cohort, 2.0, "3D"), _offset(cohort, -0.5, "2.5D")])
    assert list(table.columns) == ["Metric", "Category", "Sex", "n", "Mean Pred.", "3D", "2.5D"]
    mae = table[table["Metric"] == "MAE"]
    labels = list(zip(mae["Category"], mae["Sex"]))
    assert labels[:3] == [("Healthy", "F"), ("Healthy", "M"), ("Healthy", "M+F")]
    assert labels[-3:] == [("Overall", "F"), ("Overall", "M"), ("Overall", "M+F")]
    assert len(labels) == 12
    assert list(mae["n"]) == [4, 4, 8] * 3 + [12, 12, 24]
    np.testing.assert_allclose(mae["3D"], 2.0)
    np.testing.assert_allclose(mae["2.5D"], 0.5)
    assert list(table["Metric"].iloc[12:]) == [
        "Nr. training samples",
        "Runtime/epoch (min)",
        "Runtime/epoch sd (min)",
        "Inference/sample (s)",
    ]


def test_baseline_uses_training_means_of_each_rows_population():
    cohort = _cohort()
    table = evaluate.table1(cohort, []).set_index(["Category", "Sex"])
    train, test = cohort[cohort["split"] == "train"], cohort[cohort["split"] == "test"]

    def expected(mask_train, mask_test):
        return np.abs(test.loc[mask_test, "age"] - train.loc[mask_train, "age"].mean()).mean()

    assert table.loc[("Obese", "M"), "Mean Pred."] == pytest.approx(
        expected(
            (train["sex"] == "M") & (train["bmi_group"] == "obese"),
            (test["sex"] == "M") & (test["bmi_group"] == "obese"),
        )
    )
    assert table.loc[("Healthy", "M+F"), "Mean Pred."] == pytest.approx(
        expected(train["bmi_group"] == "healthy", test["bmi_group"] == "healthy")
    )
    assert table.loc[("Overall", "F"), "Mean Pred."] == pytest.approx(
        expected(train["sex"] == "F", test["sex"] == "F")
    )
    assert table.loc[("Overall", "M+F"), "Mean Pred."] == pytest.approx(
        expected(train["age"] > 0, test["age"] > 0)
    )
    assert table.loc[("-", "-"), "Mean Pred."].isna().all()  # no costs for the baseline


def test_mean_prediction_never_sees_test_ages():
    cohort = _cohort()
    shifted = cohort.copy()
    shifted.loc[shifted["split"] == "test", "age"] += 30
    a, b = evaluate.mean_prediction(cohort), evaluate.mean_prediction(shifted)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == (cohort["split"] == "test").sum() and list(a.columns) == ["eid", "predicted"]
    train = cohort[cohort["split"] == "train"]
    first = cohort[cohort["split"] == "test"].iloc[0]
    own = train[(train["sex"] == first["sex"]) & (train["bmi_group"] == first["bmi_group"])][
        "age"
    ].mean()
    assert a["predicted"].iloc[0] == pytest.approx(own)


def test_group_without_training_peers_gives_na_not_a_silent_skip():
    cohort = _cohort()
    cohort = cohort[~((cohort["split"] == "train") & (cohort["group"] == "M_obese"))]
    table = evaluate.table1(cohort, []).set_index(["Category", "Sex"])
    assert math.isnan(table.loc[("Obese", "M"), "Mean Pred."])
    assert not math.isnan(table.loc[("Obese", "M+F"), "Mean Pred."])


def test_cost_rows_from_method_records():
    cohort = _cohort()
    method = _offset(
        cohort,
        1.0,
        training_samples=72,
        epoch_seconds=[60.0, 120.0, 90.0],
        inference_seconds_per_sample=0.25,
    )
    table = evaluate.table1(cohort, [method]).set_index("Metric")
    assert table.loc["Nr. training samples", "3D"] == 72
    assert table.loc["Runtime/epoch (min)", "3D"] == pytest.approx(1.5)
    assert table.loc["Runtime/epoch sd (min)", "3D"] == pytest.approx(0.5)
    assert table.loc["Inference/sample (s)", "3D"] == pytest.approx(0.25)


def test_missing_predictions_and_bad_cohorts_raise():
    cohort = _cohort()
    method = _offset(cohort, 1.0)
    method.predictions = method.predictions.iloc[1:]
    with pytest.raises(ValueError, match="no prediction for 1 of 24 test participants"):
        evaluate.table1(cohort, [method])
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['split'\]"):
        evaluate.table1(cohort.drop(columns="split"), [])
    odd = cohort.copy()
    odd.loc[odd.index[-1], "bmi_group"] = "underweight"
    with pytest.raises(ValueError, match="bmi_group not in"):
        evaluate.table1(odd, [])
    with pytest.raises(ValueError, match="must be unique"):
        evaluate.table1(cohort, [_offset(cohort, 1.0, "Mean Pred.")])


def test_overall_mae_matches_table():
    cohort = _cohort()
    method = _offset(cohort, 3.0)
    result = evaluate.overall_mae(cohort, method)
    table = evaluate.table1(cohort, [method]).set_index(["Category", "Sex"])
    assert result["mae"] == pytest.approx(3.0) and result["n"] == 24
    assert result["baseline_mae"] == pytest.approx(table.loc[("Overall", "M+F"), "Mean Pred."])


def test_write_table1_tsv_and_paper_like_markdown(tmp_path):
    cohort = _cohort()
    methods = [
        _offset(
            cohort,
            2.0,
            "3D",
            training_samples=1536,
            epoch_seconds=[3000.0, 3160.0],
            inference_seconds_per_sample=0.286,
        ),
        _offset(cohort, 1.0, "3D (bias-corrected)"),
    ]
    table = evaluate.table1(cohort, methods)
    evaluate.write_table1(table, tmp_path / "t.tsv", tmp_path / "t.md")
    back = pd.read_csv(tmp_path / "t.tsv", sep="\t")
    assert list(back.columns) == list(table.columns)
    np.testing.assert_allclose(back["3D"].iloc[:12], 2.0)
    assert back["Mean Pred."].iloc[12:].isna().all()  # "N/A" reads back as missing
    md = (tmp_path / "t.md").read_text().splitlines()
    assert md[0] == "| Metric | Category | Sex | n | Mean Pred. | 3D | 3D (bias-corrected) |"
    assert md[2].startswith("| MAE | Healthy | F | 4 |") and md[2].endswith("| 2.000 | **1.000** |")
    assert md[3].startswith("|  |  | M | 4 |")  # grouped labels, as in the paper
    assert "| Nr. training samples | - | - | - | N/A | 1,536 | N/A |" in md
    assert "| Runtime/epoch (min) | - | - | - | N/A | 51.33 ± 1.89 | N/A |" in md


def test_read_epoch_seconds(tmp_path):
    (tmp_path / "metrics.tsv").write_text(
        "epoch\ttrain_mae\tval_mae\tseconds\n1\t9\t8\t61.5\n2\t7\t6\t58.5\n"
    )
    assert evaluate.read_epoch_seconds(tmp_path / "metrics.tsv") == [61.5, 58.5]
    (tmp_path / "bad.tsv").write_text("epoch\tval_mae\n1\t8\n")
    with pytest.raises(ValueError, match="no 'seconds' column"):
        evaluate.read_epoch_seconds(tmp_path / "bad.tsv")


# ---- figures ---------------------------------------------------------------


def _scatter_frame(n_per_group=15):
    cohort = _cohort({"test": n_per_group})
    rng = np.random.default_rng(3)
    df = cohort[["eid", "age", "sex", "bmi_group"]].copy()
    df["predicted"] = 0.6 * df["age"] + 25 + rng.normal(0, 2, len(df))
    df["corrected"] = df["age"] + rng.normal(0, 2, len(df))
    return df


def test_scatter_before_after_writes_two_equal_panels(tmp_path):
    df = _scatter_frame()
    fig = figures.scatter_before_after(df, tmp_path / "fig7.png")
    assert (tmp_path / "fig7.png").stat().st_size > 20_000
    axes = fig.get_axes()
    assert len(axes) == 2
    assert axes[0].get_xlim() == axes[0].get_ylim() == axes[1].get_xlim()
    assert axes[0].get_title().startswith("Before") and "MAE" in axes[1].get_title()


def test_scatter_by_group_writes_six_panels_with_counts(tmp_path):
    df = _scatter_frame()
    df = df[
        ~((df["sex"] == "M") & (df["bmi_group"] == "obese"))
    ]  # an empty panel must not break it
    fig = figures.scatter_by_group(df, tmp_path / "fig8.png")
    assert (tmp_path / "fig8.png").stat().st_size > 20_000
    titles = [ax.get_title() for ax in fig.get_axes()]
    assert len(titles) == 6
    assert titles[0].startswith("Female, healthy: MAE") and titles[0].endswith("(n=15)")
    assert titles[5] == "Male, obese: no participants (n=0)"


@pytest.mark.parametrize("plot", [figures.scatter_before_after, figures.scatter_by_group])
def test_scatter_missing_column_raises(tmp_path, plot):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['corrected'\]"):
        plot(_scatter_frame().drop(columns="corrected"), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def _correction_json(tmp_path, slope):
    age = np.linspace(46, 81, 20)
    path = tmp_path / f"correction_{slope}.json"
    from ageatlas.age import bias

    bias.fit(age, slope * age + 62 * (1 - slope), "delta").to_json(path)
    return path


def test_corrected_column_of_a_model_that_did_not_learn_is_flagged_not_bolded(tmp_path):
    cohort = _cohort()
    test = cohort[cohort["split"] == "test"]
    preds = pd.DataFrame(
        {"eid": test["eid"].astype(str), "predicted": 62.0, "corrected": test["age"] + 0.001}
    )
    (tmp_path / "m.tsv").write_text("epoch\tseconds\n1\t60\n")
    (tmp_path / "t.json").write_text('{"seconds_per_sample": 0.1}')
    flat = evaluate.model_columns(
        "2.5D",
        preds,
        tmp_path / "m.tsv",
        tmp_path / "t.json",
        48,
        correction_json=_correction_json(tmp_path, 0.0),
    )
    learned = evaluate.model_columns(
        "3D",
        preds.assign(corrected=test["age"].to_numpy() + 1.0),
        tmp_path / "m.tsv",
        tmp_path / "t.json",
        48,
        correction_json=_correction_json(tmp_path, 0.6),
    )
    assert flat[1].caveat and "has not learned age" in flat[1].caveat and learned[1].caveat is None
    table = evaluate.table1(cohort, [*flat, *learned])
    evaluate.write_table1(table, tmp_path / "t.tsv", tmp_path / "t.md")
    md = (tmp_path / "t.md").read_text()
    row = md.splitlines()[2]
    # the flagged 0.001 is not the row's best; the learned model's corrected 1.000 is
    assert row.endswith("| 0.001 † | 11.500 | **1.000** |")
    assert "**0.001" not in md
    assert "† 2.5D (bias-corrected) does not measure the 2.5D model" in md


def test_a_given_model_on_a_cohort_without_train_split(tmp_path):
    """Trained elsewhere: its training costs say "given checkpoint", and without a train split
    the mean prediction is N/A; the notes under the table say why."""
    cohort = _cohort({"test": 4})
    predictions = _offset(cohort, 1.0).predictions.assign(corrected=lambda t: t["predicted"])
    (tmp_path / "timing.json").write_text('{"seconds_per_sample": 0.5}')
    methods = evaluate.model_columns(
        "3D",
        predictions,
        None,
        tmp_path / "timing.json",
        training_samples=0,
        given="/models/checkpoint.pt",
    )
    assert [m.given for m in methods] == ["/models/checkpoint.pt"] * 2
    table = evaluate.table1(cohort, methods)
    assert table["Mean Pred."].isna().all()
    costs = table.set_index("Metric")
    assert math.isnan(costs.loc["Nr. training samples", "3D"])
    assert costs.loc["Inference/sample (s)", "3D"] == 0.5
    assert evaluate.overall_mae(cohort, methods[0]) == {
        "mae": pytest.approx(1.0),
        "baseline_mae": pytest.approx(math.nan, nan_ok=True),
        "n": 24,
    }
    evaluate.write_table1(table, tmp_path / "t.tsv", tmp_path / "t.md")
    md = (tmp_path / "t.md").read_text()
    assert "| Nr. training samples | - | - | - | N/A | given checkpoint | given checkpoint |" in md
    assert "| Runtime/epoch (min) | - | - | - | N/A | given checkpoint | given checkpoint |" in md
    assert "Mean Pred. is N/A: the cohort has no train split" in md
    assert "3D and 3D (bias-corrected): the given checkpoint /models/checkpoint.pt" in md
