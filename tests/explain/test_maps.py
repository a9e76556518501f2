"""Tests for population maps and ageing classes."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ageatlas.core.vocabulary import AGEING_CLASSES
from ageatlas.explain.maps import (
    ageing_class,
    ageing_table,
    mean_map,
    near_perfect,
    smooth,
    subset_eids,
    usable_maps,
)

SHAPE = (12, 12, 16)
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _write(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return str(path)


@pytest.fixture
def stack(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.gamma(2.0, 1.0, size=(7, *SHAPE)).astype(np.float32)
    paths = [_write(tmp_path / f"m{i}.nii.gz", d) for i, d in enumerate(data)]
    return paths, data.astype(np.float64)


def test_mean_and_sd_match_numpy(stack):
    paths, data = stack
    maps = mean_map(paths)
    mean, sd, n = maps.mean, maps.sd, maps.n
    assert n == 7
    np.testing.assert_allclose(mean.get_fdata(), data.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(sd.get_fdata(), data.std(axis=0, ddof=1), rtol=1e-5)
    np.testing.assert_array_equal(mean.affine, AFFINE)
    assert b"n=7" in mean.header["descrip"].tobytes()
    assert b"n=7" in sd.header["descrip"].tobytes()


def test_single_map_sd_is_nan(stack):
    paths, data = stack
    maps = mean_map(paths[:1])
    mean, sd, n = maps.mean, maps.sd, maps.n
    assert n == 1
    np.testing.assert_allclose(mean.get_fdata(), data[0], rtol=1e-6)
    assert np.isnan(sd.get_fdata()).all()


def test_shape_mismatch_names_file(stack, tmp_path):
    paths, _ = stack
    bad = _write(tmp_path / "wrong_shape.nii.gz", np.zeros((12, 12, 15)))
    with pytest.raises(ValueError, match="wrong_shape.nii.gz.*shape"):
        mean_map(paths + [bad])


def test_affine_mismatch_names_file(stack, tmp_path):
    paths, _ = stack
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    bad = _write(tmp_path / "wrong_affine.nii.gz", np.zeros(SHAPE), shifted)
    with pytest.raises(ValueError, match="wrong_affine.nii.gz.*affine"):
        mean_map(paths[:2] + [bad] + paths[2:])


def test_signed_maps_with_coverage(tmp_path):
    """NaN (outside a participant's field of view) is left out; signed parts averaged apart."""
    maps = np.array(
        [[[[2.0, -1.0, np.nan]]], [[[-4.0, -3.0, 5.0]]], [[[np.nan, 1.0, np.nan]]]]
    )  # three maps of 1 x 1 x 3 voxels
    paths = [_write(tmp_path / f"s{i}.nii.gz", m) for i, m in enumerate(maps)]
    out = mean_map(paths)
    assert out.n == 3
    np.testing.assert_allclose(out.count.get_fdata().ravel(), [2, 3, 1])
    np.testing.assert_allclose(out.mean.get_fdata().ravel(), [3.0, 5.0 / 3, 5.0])
    np.testing.assert_allclose(out.positive.get_fdata().ravel(), [1.0, 1.0 / 3, 5.0])
    np.testing.assert_allclose(out.negative.get_fdata().ravel(), [-2.0, -4.0 / 3, 0.0])
    sd = out.sd.get_fdata().ravel()
    assert sd[0] == pytest.approx(np.std([2.0, 4.0], ddof=1)) and np.isnan(sd[2])
    uncovered = _write(tmp_path / "none.nii.gz", np.full((1, 1, 3), np.nan))
    assert np.isnan(mean_map([uncovered]).mean.get_fdata()).all()


def test_per_year_is_the_least_squares_slope_on_the_predicted_age(tmp_path):
    """Evidence that grows with the predicted age stands out; evidence that does not, cancels."""
    rng = np.random.default_rng(3)
    predicted = np.linspace(45.0, 80.0, 20)
    pattern = np.zeros(SHAPE)
    pattern[4:8, 4:8, 6:10] = 0.05  # years of attribution per year of predicted age
    noise = rng.normal(0.0, 1.0, size=(len(predicted), *SHAPE))  # large, of either sign
    data = (predicted - 60.0)[:, None, None, None] * pattern + noise
    data[0, 0, 0, :] = np.nan  # outside the first participant's field of view
    paths = [_write(tmp_path / f"p{i}.nii.gz", d) for i, d in enumerate(data)]
    out = mean_map(paths, predicted=predicted).per_year.get_fdata()
    expected = np.empty(SHAPE)
    for index in np.ndindex(SHAPE):
        covered = np.isfinite(data[(slice(None), *index)])
        expected[index] = np.polyfit(predicted[covered], data[(covered, *index)], 1)[0]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)
    # The planted pattern dominates the slope map, not the mean |map|.
    inside = pattern > 0
    slope_contrast = np.abs(out[inside]).mean() / np.abs(out[~inside]).mean()
    mean_contrast = np.abs(data[:, inside]).mean() / np.nanmean(np.abs(data[:, ~inside]))
    assert slope_contrast > 2 and mean_contrast < 1.3


def test_per_year_needs_two_maps_with_different_predictions(tmp_path):
    maps = np.array([[[[1.0, 2.0, np.nan]]], [[[3.0, 2.0, 1.0]]]])
    paths = [_write(tmp_path / f"q{i}.nii.gz", m) for i, m in enumerate(maps)]
    out = mean_map(paths, predicted=[50.0, 60.0]).per_year.get_fdata().ravel()
    np.testing.assert_allclose(out[:2], [0.2, 0.0])
    assert np.isnan(out[2])  # one map covers it
    assert np.isnan(mean_map(paths, predicted=[55.0, 55.0]).per_year.get_fdata()).all()
    assert np.isnan(mean_map(paths).per_year.get_fdata()).all()  # no predictions given
    with pytest.raises(ValueError, match="2 maps.*1 predicted"):
        mean_map(paths, predicted=[50.0])


def test_per_year_of_age_keeps_what_follows_age_and_drops_what_follows_only_the_prediction(
    tmp_path,
):
    """A model that also reads a region with no age in it (here: its errors come from there)
    puts that region in the slope on the prediction, not in the slope on age."""
    rng = np.random.default_rng(5)
    age = np.linspace(45.0, 80.0, 30)
    error = rng.normal(0.0, 8.0, size=age.size)  # what the model reads in the confound region
    error -= np.polyval(np.polyfit(age, error, 1), age)  # made exactly unrelated to age
    predicted = age + error
    age_region, confound = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    age_region[4:8, 4:8, 6:10] = True
    confound[0:4, 0:4, 0:4] = True
    data = np.zeros((age.size, *SHAPE))
    data[:, age_region] = 0.05 * (age - 60.0)[:, None]
    data[:, confound] = 0.05 * error[:, None]
    paths = [_write(tmp_path / f"c{i}.nii.gz", d) for i, d in enumerate(data)]
    maps = mean_map(paths, predicted=predicted, age=age)
    on_prediction, on_age = maps.per_year.get_fdata(), maps.per_year_of_age.get_fdata()
    np.testing.assert_allclose(on_age[age_region], 0.05, rtol=1e-6)
    np.testing.assert_allclose(on_age[confound], 0.0, atol=1e-9)
    assert np.abs(on_prediction[confound]).min() > 0.01  # the confound rises with the prediction
    assert np.isnan(mean_map(paths, predicted=predicted).per_year_of_age.get_fdata()).all()
    with pytest.raises(ValueError, match="30 maps but 2 ages"):
        mean_map(paths, age=[50.0, 60.0])


def test_empty_path_list_rejected():
    with pytest.raises(ValueError, match="at least one"):
        mean_map([])


def test_ageing_class_fixed_threshold():
    gap = pd.Series([-3.0, -2.0, -1.9, 0.0, 2.0, 2.1, np.nan])
    got = ageing_class(gap, threshold=2.0)
    expected = ["decelerated", "aligned", "aligned", "aligned", "aligned", "accelerated"]
    assert got.iloc[:6].tolist() == expected
    assert pd.isna(got.iloc[6])
    assert list(got.cat.categories) == list(AGEING_CLASSES)


def test_ageing_class_sd_threshold():
    gap = pd.Series([-2.0, -1.0, 0.0, 1.0, 2.0])  # sample SD = sqrt(2.5) ~ 1.58
    assert ageing_class(gap).tolist() == [
        "decelerated",
        "aligned",
        "aligned",
        "aligned",
        "accelerated",
    ]
    # 0.5 SD ~ 0.79 moves +-1 out of "aligned"
    assert ageing_class(gap, sd_multiple=0.5).tolist() == [
        "decelerated",
        "decelerated",
        "aligned",
        "accelerated",
        "accelerated",
    ]


def test_near_perfect():
    gap = pd.Series([-0.6, -0.49, 0.0, 0.5, 0.3])
    assert near_perfect(gap).tolist() == [False, True, True, False, True]


def test_subset_maps_as_the_workflow_builds_them(stack):
    """subset_eids picks a subset's members, mean_map averages their maps (rule population_map)."""
    paths, data = stack
    eids = [f"{1000 + i}" for i in range(7)]
    by_eid = dict(zip(eids, paths))
    table = pd.DataFrame(
        {
            "eid": eids,
            "group": ["F_healthy"] * 7,
            "age_band": ["lt60", "lt60", "lt60", "60to70", "60to70", "60to70", "60to70"],
            "gap": [5.0, 4.0, 0.1, -0.2, 0.3, 0.0, 0.2],
        }
    )
    table["ageing_class"] = ageing_class(table["gap"], threshold=3.0)

    def subset_map(subset):
        return mean_map([by_eid[e] for e in subset_eids(table, "F_healthy", subset)])

    assert subset_map("all").n == 7
    assert len(subset_eids(table, "F_healthy", "age_band-lt60")) == 3
    assert subset_eids(table, "F_healthy", "ageing_class-decelerated") == []
    band = subset_map("age_band-60to70")
    assert band.n == 4
    np.testing.assert_allclose(band.mean.get_fdata(), data[3:].mean(axis=0), rtol=1e-6)
    accelerated = subset_map("ageing_class-accelerated")
    assert accelerated.n == 2
    np.testing.assert_allclose(accelerated.sd.get_fdata(), data[:2].std(axis=0, ddof=1), rtol=1e-5)


# ---- workflow helpers: ageing table, subsets, usable maps ------------------


def _predictions_and_cohort():
    predictions = pd.DataFrame(
        {
            "eid": [1, 2, 3, 4, 5, 6, 7],
            "split": ["test"] * 6 + ["val"],
            "age": [50.0, 55.0, 65.0, 72.0, 58.0, 61.0, 70.0],
            "gap": [5.0, -5.0, 0.1, 0.0, 3.0, -0.2, 9.0],
        }
    )
    cohort = pd.DataFrame(
        {
            "eid": ["1", "2", "3", "4", "5", "6", "7"],
            "sex": ["F"] * 4 + ["M"] * 3,
            "bmi": [22.0] * 7,
            "group": ["F_healthy"] * 4 + ["M_healthy"] * 3,
            "age_band": ["lt60", "lt60", "60to70", "ge70", "lt60", "60to70", "ge70"],
        }
    )
    return predictions, cohort


def test_ageing_table_classes_within_groups_by_threshold():
    predictions, cohort = _predictions_and_cohort()
    table = ageing_table(predictions, cohort, threshold=2.0)
    assert list(table["eid"]) == ["1", "2", "3", "4", "5", "6"]  # test split only, eids as text
    classes = dict(zip(table["eid"], table["ageing_class"]))
    assert classes == {
        "1": "accelerated",
        "2": "decelerated",
        "3": "aligned",
        "4": "aligned",
        "5": "accelerated",
        "6": "aligned",
    }
    assert list(table.loc[table["near_perfect"], "eid"]) == ["3", "4", "6"]


def test_ageing_table_rejects_participants_missing_from_cohort():
    predictions, cohort = _predictions_and_cohort()
    with pytest.raises(ValueError, match="missing from the cohort"):
        ageing_table(predictions, cohort[cohort["eid"] != "3"])


def test_subset_eids():
    predictions, cohort = _predictions_and_cohort()
    table = ageing_table(predictions, cohort, threshold=2.0)
    assert subset_eids(table, "F_healthy", "all") == ["1", "2", "3", "4"]
    assert subset_eids(table, "F_healthy", "age_band-lt60") == ["1", "2"]
    assert subset_eids(table, "M_healthy", "ageing_class-accelerated") == ["5"]
    assert subset_eids(table, "M_healthy", "ageing_class-decelerated") == []
    with pytest.raises(ValueError, match="unknown subset"):
        subset_eids(table, "F_healthy", "age_band-old")


def test_usable_maps_leaves_out_failed_registrations(tmp_path):
    import json

    warped, records = [], []
    for eid, status in (("1", "ok"), ("2", "failed"), ("3", "ok")):
        warped.append(str(tmp_path / f"{eid}.nii.gz"))
        record = tmp_path / f"{eid}.json"
        record.write_text(
            json.dumps({"status": status, "reasons": [] if status == "ok" else ["folding"]})
        )
        records.append(str(record))
    used, excluded = usable_maps(["1", "2", "3"], warped, records)
    assert used == [warped[0], warped[2]] and excluded == {"2": "registration failed: folding"}
    with pytest.raises(ValueError, match="participant 9"):
        usable_maps(["9"], warped, records)


def test_ageing_table_leaves_a_single_participant_group_unclassified():
    predictions, cohort = _predictions_and_cohort()
    predictions = predictions[predictions["eid"] != 6].assign(split="test")
    predictions = predictions[~predictions["eid"].isin([5])]
    table = ageing_table(predictions, cohort)  # M_healthy has only eid 7: no SD
    assert table.loc[table["eid"] == "7", "ageing_class"].isna().all()
    assert table.loc[table["group"] == "F_healthy", "ageing_class"].notna().all()


def test_eid_of_path_and_nan_map():
    from ageatlas.core.paths import eid_of_path
    from ageatlas.explain.maps import nan_map

    assert eid_of_path("/a/b/1000123.nii.gz") == "1000123" and eid_of_path("x/42.json") == "42"
    reference = nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE)
    placeholder = nan_map(reference, "registration failed")
    assert placeholder.shape == SHAPE and np.allclose(placeholder.affine, AFFINE)
    assert np.isnan(placeholder.get_fdata()).all()
    assert placeholder.header["descrip"].tobytes().startswith(b"registration failed")


def test_smooth_has_its_fwhm_in_millimetres_on_each_axis():
    """A point spreads to half its peak at FWHM / 2 mm, whatever the voxel size of the axis."""
    point = np.zeros((41, 41, 41))
    point[20, 20, 20] = 1.0
    affine = np.diag([2.0, 4.0, 5.0, 1.0])
    blurred = smooth(point, affine, 20.0)
    for axis, spacing in enumerate((2.0, 4.0, 5.0)):
        profile = np.moveaxis(blurred, axis, 0)[:, 20, 20]
        half = profile.max() / 2
        # linear interpolation of where the profile crosses half its peak, in mm
        above = np.flatnonzero(profile >= half)
        edge = above[-1]
        crossing = edge + (profile[edge] - half) / (profile[edge] - profile[edge + 1])
        assert (crossing - 20) * spacing == pytest.approx(10.0, rel=0.1)
    assert blurred.sum() == pytest.approx(1.0)


def test_smooth_cancels_opposite_signs_and_keeps_the_field_of_view():
    checker = np.indices((12, 12, 16)).sum(axis=0) % 2 * 2.0 - 1.0  # +-1 alternating
    data = checker + 3.0
    data[:, :, 12:] = np.nan  # outside the participant's field of view
    out = smooth(data, AFFINE, 8.0)
    assert np.isnan(out[:, :, 12:]).all()
    # A constant level survives to the edge of the field of view (not pulled towards the
    # zeros outside it); the +-1 pattern averages out.
    assert np.allclose(out[:, :, :12], 3.0, atol=0.05)
    assert smooth(data, AFFINE, None) is data and smooth(data, AFFINE, 0) is data


def test_mean_map_smooths_each_map_before_the_magnitude(tmp_path):
    """Smoothing after |map| would keep the noise; each signed map is smoothed first."""
    checker = np.indices(SHAPE).sum(axis=0) % 2 * 2.0 - 1.0
    paths = [_write(tmp_path / f"m{i}.nii.gz", checker * (i + 1)) for i in range(3)]
    raw = mean_map(paths)
    smoothed = mean_map(paths, predicted=[50, 60, 70], fwhm_mm=8.0)
    assert np.allclose(raw.mean.get_fdata(), 2.0)
    assert np.nanmax(smoothed.mean.get_fdata()) < 0.2
    expected = np.mean([np.abs(smooth(checker * (i + 1), AFFINE, 8.0)) for i in range(3)], axis=0)
    assert np.allclose(smoothed.mean.get_fdata(), expected, atol=1e-5)
    # The map says how it was smoothed.
    assert b"fwhm 8" in smoothed.mean.header["descrip"].tobytes()
    assert b"fwhm" not in raw.mean.header["descrip"].tobytes()
