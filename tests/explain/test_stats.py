"""Tests for the permutation comparison of two sets of maps."""

import nibabel as nib
import numpy as np
import pytest

from ageatlas.explain.stats import compare_classes

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
