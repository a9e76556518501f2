"""Tests for the permutation comparison of two sets of maps."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ageatlas.core.vocabulary import AGE_BANDS
from ageatlas.explain.stats import Untestable, compare_classes, confound_matrix, group_contrast

SHAPE = (12, 12, 16)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
REGION = (slice(4, 7), slice(4, 7), slice(6, 10))
N_PER_CLASS = 10


def _maps(tmp_path, prefix, n, rng, effect=0.0):
    paths = []
    for i in range(n):
        data = 5.0 + rng.standard_normal(SHAPE)
        data[REGION] += effect
        path = tmp_path / f"{prefix}{i}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), str(path))
        paths.append(str(path))
    return paths


def _region_mask():
    inside = np.zeros(SHAPE, dtype=bool)
    inside[REGION] = True
    return inside


def test_finds_planted_difference_only_there(tmp_path):
    rng = np.random.default_rng(0)
    a = _maps(tmp_path, "acc", N_PER_CLASS, rng, effect=4.0)
    b = _maps(tmp_path, "dec", N_PER_CLASS, rng)
    res = compare_classes(a, b, n_perm=200, seed=0)

    sig = res["significant"].get_fdata() > 0
    inside = _region_mask()
    assert sig[inside].mean() > 0.9
    assert sig[~inside].sum() <= 2  # FWE at 5%: at most a stray voxel
    assert (res["t"].get_fdata()[inside] > 0).all()  # a > b gives positive t
    assert res["logp_fwe"].get_fdata().max() <= np.log10(201) + 1e-6
    assert (res["n_a"], res["n_b"], res["n_perm"]) == (N_PER_CLASS, N_PER_CLASS, 200)
    assert res["n_significant"] == int(sig.sum())
    assert res["t"].shape == SHAPE


def test_saved_maps_keep_their_values(tmp_path):
    """t and -log10 p are stored as float32 (not as the mask's bytes), significant as 0/1."""
    rng = np.random.default_rng(1)
    a = _maps(tmp_path, "acc", 4, rng, effect=4.0)
    b = _maps(tmp_path, "dec", 4, rng)
    res = compare_classes(a, b, n_perm=50, seed=0)
    for key in ("t", "logp_fwe", "significant"):
        path = tmp_path / f"{key}.nii.gz"
        nib.save(res[key], str(path))
        saved = nib.load(str(path))
        np.testing.assert_allclose(saved.get_fdata(), res[key].get_fdata(), rtol=1e-6)
        assert np.allclose(saved.affine, AFFINE)
    assert nib.load(str(tmp_path / "t.nii.gz")).get_data_dtype() == np.float32
    assert np.abs(res["t"].get_fdata()).max() > 3  # real t-values, not bytes
    assert set(np.unique(nib.load(str(tmp_path / "significant.nii.gz")).get_fdata())) <= {0, 1}


def test_null_data_has_no_significant_voxels(tmp_path):
    rng = np.random.default_rng(0)
    a = _maps(tmp_path, "acc", N_PER_CLASS, rng)
    b = _maps(tmp_path, "dec", N_PER_CLASS, rng)
    res = compare_classes(a, b, n_perm=200, seed=0)
    assert res["n_significant"] <= 1


def test_explicit_mask_restricts_test(tmp_path):
    rng = np.random.default_rng(2)
    a = _maps(tmp_path, "acc", 4, rng, effect=3.0)
    b = _maps(tmp_path, "dec", 4, rng)
    mask = nib.Nifti1Image(_region_mask().astype(np.uint8), AFFINE)
    res = compare_classes(a, b, mask, n_perm=50, seed=0)
    assert (res["logp_fwe"].get_fdata()[~_region_mask()] == 0).all()


def test_mask_on_other_grid_rejected(tmp_path):
    rng = np.random.default_rng(3)
    a = _maps(tmp_path, "acc", 2, rng)
    b = _maps(tmp_path, "dec", 2, rng)
    mask = nib.Nifti1Image(np.ones((12, 12, 15), dtype=np.uint8), AFFINE)
    with pytest.raises(ValueError, match="mask"):
        compare_classes(a, b, mask, n_perm=50)


def test_too_few_maps_rejected(tmp_path):
    rng = np.random.default_rng(4)
    a = _maps(tmp_path, "acc", 3, rng)
    b = _maps(tmp_path, "dec", 1, rng)
    with pytest.raises(ValueError, match="maps_b has 1 maps"):
        compare_classes(a, b, n_perm=10)
    with pytest.raises(ValueError, match="maps_a has 1 maps"):
        compare_classes(b, a, n_perm=10)


def test_mismatched_map_names_file(tmp_path):
    rng = np.random.default_rng(5)
    a = _maps(tmp_path, "acc", 3, rng)
    b = _maps(tmp_path, "dec", 2, rng)
    bad = tmp_path / "odd_one.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((12, 12, 15), np.float32), AFFINE), str(bad))
    with pytest.raises(ValueError, match="odd_one.nii.gz"):
        compare_classes(a, b + [str(bad)], n_perm=50)


def test_tfce_outputs(tmp_path):
    rng = np.random.default_rng(6)
    a = _maps(tmp_path, "acc", 6, rng, effect=4.0)
    b = _maps(tmp_path, "dec", 6, rng)
    res = compare_classes(a, b, n_perm=50, seed=0, tfce=True)
    logp = res["logp_fwe_tfce"].get_fdata()
    assert res["tfce"].shape == SHAPE
    assert logp[_region_mask()].min() > logp[~_region_mask()].max()


def test_too_few_permutations_rejected(tmp_path):
    rng = np.random.default_rng(7)
    a = _maps(tmp_path, "acc", 2, rng)
    b = _maps(tmp_path, "dec", 2, rng)
    with pytest.raises(ValueError, match="n_perm=10"):
        compare_classes(a, b, n_perm=10)


def _write(tmp_path, name, data):
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), AFFINE), str(path))
    return str(path)


def _age_driven(tmp_path, rng, n=N_PER_CLASS):
    """Maps whose region grows with age; class a is about 10 years older than class b."""
    ages = np.r_[rng.normal(68, 4, n), rng.normal(58, 4, n)]
    paths = []
    for i, age in enumerate(ages):
        data = 5.0 + rng.standard_normal(SHAPE)
        data[REGION] += 0.6 * (age - 60)
        paths.append(_write(tmp_path, f"m{i}", data))
    return paths[:n], paths[n:], ages


def test_age_confound_removes_a_difference_that_age_explains(tmp_path):
    rng = np.random.default_rng(10)
    a, b, ages = _age_driven(tmp_path, rng)
    bmi = rng.normal(27, 4, len(ages))
    plain = compare_classes(a, b, n_perm=200, seed=0)
    assert plain["significant"].get_fdata()[_region_mask()].mean() > 0.9
    assert plain["confounds"] == [] and plain["confounds_dropped"] == {}
    adjusted = compare_classes(
        a, b, n_perm=200, seed=0, confounds=pd.DataFrame({"age": ages, "bmi": bmi})
    )
    assert adjusted["confounds"] == ["age", "bmi"] and adjusted["confounds_dropped"] == {}
    assert adjusted["n_significant"] <= 1
    t_plain = plain["t"].get_fdata()[_region_mask()]
    t_adjusted = adjusted["t"].get_fdata()[_region_mask()]
    assert np.abs(t_adjusted).mean() < 0.2 * t_plain.mean()
    # BMI alone explains nothing here: the difference stays.
    bmi_only = compare_classes(a, b, n_perm=200, seed=0, confounds=pd.DataFrame({"bmi": bmi}))
    assert bmi_only["significant"].get_fdata()[_region_mask()].mean() > 0.9


def test_age_confound_keeps_a_difference_beyond_age(tmp_path):
    rng = np.random.default_rng(11)
    a, b, ages = _age_driven(tmp_path, rng)
    for path in a:  # class a is higher again, beyond what its age gives
        img = nib.load(path)
        data = img.get_fdata()
        data[REGION] += 8.0
        nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), path)
    res = compare_classes(a, b, n_perm=200, seed=0, confounds=pd.DataFrame({"age": ages}))
    assert res["significant"].get_fdata()[_region_mask()].mean() > 0.9
    assert (res["t"].get_fdata()[_region_mask()] > 0).all()


def test_constant_confound_is_dropped_and_recorded(tmp_path):
    rng = np.random.default_rng(12)
    a = _maps(tmp_path, "acc", 5, rng, effect=4.0)
    b = _maps(tmp_path, "dec", 5, rng)
    confounds = pd.DataFrame({"eid": [str(i) for i in range(10)], "bmi": np.full(10, 25.0)})
    res = compare_classes(a, b, n_perm=100, seed=0, confounds=confounds)
    plain = compare_classes(a, b, n_perm=100, seed=0)
    assert res["confounds"] == [] and "constant" in res["confounds_dropped"]["bmi"]
    # The same test as without it: permutations, not the sign flips nilearn would
    # switch to on seeing a constant column among the confounds.
    np.testing.assert_allclose(res["t"].get_fdata(), plain["t"].get_fdata())
    np.testing.assert_allclose(res["logp_fwe"].get_fdata(), plain["logp_fwe"].get_fdata())


def test_collinear_and_surplus_confounds_are_dropped_and_recorded():
    tested = np.r_[np.ones(3), -np.ones(2)]
    confounds = pd.DataFrame(
        {
            "same_as_class": 3 * tested + 1,
            "age": [50.0, 61.0, 55.0, 72.0, 66.0],
            "bmi": [20.0, 31.0, 26.0, 24.0, 29.0],
        }
    )
    matrix, record = confound_matrix(confounds, tested)
    # 5 maps - intercept - class - age leaves 2 degrees of freedom; BMI would leave 1.
    assert record["confounds"] == ["age"]
    assert "collinear" in record["confounds_dropped"]["same_as_class"]
    assert "degrees of freedom" in record["confounds_dropped"]["bmi"]
    assert matrix.shape == (5, 1)
    np.testing.assert_allclose(matrix.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(matrix.std(0), 1)


def test_missing_confound_value_rejected():
    tested = np.r_[np.ones(3), -np.ones(3)]
    with pytest.raises(ValueError, match="'age' is missing"):
        confound_matrix(pd.DataFrame({"age": [50, 60, np.nan, 55, 65, 70]}), tested)
    with pytest.raises(ValueError, match="5 confound rows for 6 maps"):
        confound_matrix(pd.DataFrame({"age": [50, 60, 52, 55, 65]}), tested)


def test_voxels_not_finite_in_every_map_are_left_out(tmp_path):
    rng = np.random.default_rng(13)
    a = _maps(tmp_path, "acc", N_PER_CLASS, rng, effect=4.0)
    b = _maps(tmp_path, "dec", N_PER_CLASS, rng)
    # One participant's field of view ends at z = 8: half the planted region is outside it.
    img = nib.load(a[0])
    data = img.get_fdata()
    data[:, :, 8:] = np.nan
    data[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), a[0])
    res = compare_classes(a, b, n_perm=200, seed=0)
    outside = np.zeros(SHAPE, bool)
    outside[:, :, 8:] = True
    outside[0, 0, 0] = True
    assert res["n_voxels_not_finite"] == outside.sum()
    assert res["n_voxels"] == (~outside).sum()
    for key in ("t", "logp_fwe", "significant"):
        values = res[key].get_fdata()
        assert np.isfinite(values).all()
        assert (values[outside] == 0).all()
    sig = res["significant"].get_fdata() > 0
    assert sig[_region_mask() & ~outside].all()


def test_signed_maps(tmp_path):
    """Unscaled maps are signed (years): lower importance in a shows as negative t."""
    rng = np.random.default_rng(14)
    a = _maps(tmp_path, "acc", N_PER_CLASS, rng, effect=-4.0)
    b = _maps(tmp_path, "dec", N_PER_CLASS, rng)
    for path in a + b:  # centre on zero: half the voxels negative
        img = nib.load(path)
        nib.save(nib.Nifti1Image((img.get_fdata() - 5.0).astype(np.float32), AFFINE), path)
    res = compare_classes(a, b, n_perm=200, seed=0)
    assert res["n_voxels"] == np.prod(SHAPE)
    assert res["significant"].get_fdata()[_region_mask()].mean() > 0.9
    assert (res["t"].get_fdata()[_region_mask()] < 0).all()


def test_identical_maps_are_untestable(tmp_path):
    paths = [_write(tmp_path, f"same{i}", np.ones(SHAPE)) for i in range(4)]
    with pytest.raises(Untestable, match="no voxel"):
        compare_classes(paths[:2], paths[2:], n_perm=50)


def _group(tmp_path, rng, bands, failed=()):
    """A group's ageing table, warped maps ({eid}.nii.gz) and registration records."""
    rows, warped, records = [], [], []
    for i, band in enumerate(bands):
        eid = str(1000 + i)
        age = {"lt60": 52.0, "60to70": 65.0, "ge70": 74.0}[band] + rng.uniform(-2, 2)
        bmi = rng.normal(27, 3)
        rows.append(
            {
                "eid": eid,
                "age": age,
                "sex": "M",
                "bmi": bmi,
                "group": "M_overweight",
                "age_band": band,
                "gap": 0.0,
                "ageing_class": "aligned",
            }
        )
        data = rng.standard_normal(SHAPE)
        data[REGION] += 6.0 if band == "ge70" else 0.0
        warped.append(_write(tmp_path, eid, data))
        record = tmp_path / f"{eid}.json"
        status = "failed" if eid in failed else "ok"
        record.write_text(json.dumps({"status": status, "reasons": ["NCC fell"]}))
        records.append(str(record))
    # Another group's participant in the table is not part of this test.
    rows.append({**rows[0], "eid": "9999", "group": "F_healthy"})
    return pd.DataFrame(rows), warped, records


def test_age_band_contrast(tmp_path):
    assert {"lt60", "ge70"} <= set(AGE_BANDS)
    rng = np.random.default_rng(15)
    bands = ["lt60"] * 8 + ["60to70"] * 3 + ["ge70"] * 8
    table, warped, records = _group(tmp_path, rng, bands, failed={"1018"})
    result, summary = group_contrast(
        table,
        "M_overweight",
        "age_band",
        ("lt60", "ge70"),
        warped,
        records,
        confounds=["bmi"],
        n_perm=200,
        seed=0,
    )
    assert summary["tested"] is True
    assert (summary["n_lt60"], summary["n_ge70"]) == (8, 7)
    assert list(summary["excluded"]) == ["1018"]
    assert summary["confounds"] == ["bmi"] and summary["confounds_dropped"] == {}
    means = summary["confound_means"]["bmi"]
    ok = table[(table["group"] == "M_overweight") & (table["eid"] != "1018")]
    assert means["lt60"] == pytest.approx(ok[ok["age_band"] == "lt60"]["bmi"].mean())
    assert means["ge70"] == pytest.approx(ok[ok["age_band"] == "ge70"]["bmi"].mean())
    assert summary["n_significant"] == result["n_significant"] > 0
    sig = result["significant"].get_fdata() > 0
    assert sig[_region_mask()].mean() > 0.9
    assert (result["t"].get_fdata()[_region_mask()] < 0).all()  # lt60 lower than ge70
    json.dumps(summary)  # the summary goes to JSON as it is


def test_contrast_with_too_few_usable_maps_is_not_tested(tmp_path):
    rng = np.random.default_rng(16)
    bands = ["lt60"] * 3 + ["ge70"] * 2
    table, warped, records = _group(tmp_path, rng, bands, failed={"1004"})
    result, summary = group_contrast(
        table, "M_overweight", "age_band", ("lt60", "ge70"), warped, records, confounds=["bmi"]
    )
    assert result is None
    assert summary["tested"] is False and "fewer than 2" in summary["reason"]
    assert (summary["n_lt60"], summary["n_ge70"]) == (3, 1)
    assert "1004" in summary["excluded"]


def test_maps_are_smoothed_before_the_test(tmp_path):
    """A voxel-level difference of alternating sign is significant in the raw maps and cancels
    when each map is smoothed first (fwhm_mm), as the population maps are."""
    rng = np.random.default_rng(3)
    checker = (np.indices(SHAPE).sum(axis=0) % 2 * 2.0 - 1.0) * 5.0
    inner = (slice(4, 8), slice(4, 8), slice(5, 11))  # away from the edges, where it cannot cancel
    a = _maps(tmp_path, "acc", N_PER_CLASS, rng)
    for path in a:
        data = nib.load(path).get_fdata()
        nib.save(nib.Nifti1Image((data + checker).astype(np.float32), AFFINE), path)
    b = _maps(tmp_path, "dec", N_PER_CLASS, rng)
    raw = compare_classes(a, b, n_perm=100, seed=0)["significant"].get_fdata()[inner]
    smoothed = compare_classes(a, b, n_perm=100, seed=0, fwhm_mm=6.0)["significant"]
    assert raw.mean() > 0.9
    assert smoothed.get_fdata()[inner].sum() == 0
