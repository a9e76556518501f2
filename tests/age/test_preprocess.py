"""The training cache: MedicalNet normalisation, block downsampling, atomic float16 .npy."""

import nibabel as nib
import numpy as np
import pytest

from ageatlas.age import preprocess
from ageatlas.core.files import load_npy


def body(shape=(12, 10, 14), seed=0):
    """A positive blob in a zero background, like a stitched water volume."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, np.float32)
    volume[2:-2, 3:-2, 1:-3] = rng.uniform(50, 900, (shape[0] - 4, shape[1] - 5, shape[2] - 4))
    return volume


def write_scaled_int16(path, volume, slope=0.37):
    """Save as the stitched files are: int16 voxels plus scl_slope; returns the scaled values."""
    raw = np.round(volume / slope).astype(np.int16)
    image = nib.Nifti1Image(raw, np.diag([2.232, 2.232, 3.0, 1.0]))
    image.header.set_slope_inter(slope, 0.0)
    nib.save(image, str(path))
    saved = nib.load(str(path))
    assert saved.get_data_dtype() == np.int16
    assert saved.dataobj.slope == pytest.approx(slope)  # nibabel moves scl_slope into the proxy
    return raw.astype(np.float32) * np.float32(slope)


def test_normalise_is_a_zscore_over_voxels_above_zero():
    volume = body()
    volume[0, 0, 0] = -5.0  # <= 0 counts as background, like 0
    out = preprocess.normalise(volume, rng=np.random.default_rng(1))
    foreground = volume > 0
    assert out.dtype == np.float32 and out.shape == volume.shape
    assert out[foreground].mean() == pytest.approx(0.0, abs=1e-5)
    assert out[foreground].std() == pytest.approx(1.0, abs=1e-5)
    mean, std = volume[foreground].mean(), volume[foreground].std()
    np.testing.assert_allclose(
        out[foreground], (volume[foreground] - mean) / std, rtol=1e-5, atol=1e-5
    )


def test_background_is_noise_or_zero():
    volume = body((20, 20, 20))
    background = volume <= 0
    noise = preprocess.normalise(volume, "noise", np.random.default_rng(3))[background]
    assert abs(noise.mean()) < 0.05 and noise.std() == pytest.approx(1.0, abs=0.05)
    zero = preprocess.normalise(volume, "zero")
    assert (zero[background] == 0).all()
    with pytest.raises(ValueError, match="background must be one of"):
        preprocess.normalise(volume, "mean")


def test_noise_is_reproducible_per_seed():
    volume = body()
    same = [preprocess.normalise(volume, rng=np.random.default_rng(7)) for _ in range(2)]
    other = preprocess.normalise(volume, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(same[0], same[1])
    assert not np.array_equal(same[0], other)
    np.testing.assert_array_equal(preprocess.normalise(volume), preprocess.normalise(volume))


@pytest.mark.parametrize(
    "volume, message",
    [
        (np.zeros((4, 4, 4)), "no voxel > 0"),
        (np.full((4, 4, 4), 3.0), r"constant \(3\)"),
        (np.where(np.arange(64).reshape(4, 4, 4) == 5, np.nan, 1.0), "1 NaN/inf voxel"),
    ],
)
def test_normalise_refuses_what_it_cannot_scale(volume, message):
    with pytest.raises(ValueError, match=message):
        preprocess.normalise(volume)


def test_downsample_is_a_block_mean_dropping_partial_blocks():
    volume = np.arange(7 * 5 * 4, dtype=np.float32).reshape(7, 5, 4)
    out = preprocess.downsample(volume, 2)
    assert out.shape == (3, 2, 2) == preprocess.input_shape(volume.shape, 2)
    assert out[1, 0, 1] == pytest.approx(volume[2:4, 0:2, 2:4].mean())
    assert out[2, 1, 0] == pytest.approx(
        volume[4:6, 2:4, 0:2].mean()
    )  # voxel row 6 and column 4 dropped
    assert preprocess.downsample(volume, 1) is volume
    assert preprocess.input_shape((224, 174, 370), 3) == (74, 58, 123)


@pytest.mark.parametrize("factor", [0, 2.0, True])
def test_downsample_factor_must_be_a_positive_integer(factor):
    with pytest.raises(ValueError, match="downsample factor must be an integer >= 1"):
        preprocess.downsample(np.ones((4, 4, 4)), factor)


def test_downsample_refuses_a_grid_smaller_than_a_block():
    with pytest.raises(ValueError, match="leaves no 3D volume"):
        preprocess.input_shape((8, 8, 2), 3)


def test_prepare_reads_scaled_int16_and_writes_a_float16_cache(tmp_path):
    water = tmp_path / "1000042_W.nii.gz"
    scaled = write_scaled_int16(water, body((13, 10, 9)))
    out = tmp_path / "cache" / "1000042.npy"
    info = preprocess.prepare(water, out, downsample_factor=2, seed=11)

    small = preprocess.downsample(scaled, 2)
    assert info["shape"] == small.shape == (6, 5, 4)
    assert info["mean"] == pytest.approx(small[small > 0].mean(), rel=1e-5)
    assert info["std"] == pytest.approx(small[small > 0].std(), rel=1e-5)
    assert set(info) >= {"shape", "mean", "std", "seconds"}

    cached = load_npy(out)
    assert isinstance(cached, np.memmap) and cached.dtype == np.float16
    read = preprocess.downsample(nib.load(str(water)).get_fdata(dtype=np.float32), 2)
    background = read <= 0
    # The cache leaves the background to be drawn at every read: NaN marks it.
    assert background.any() and np.isnan(cached[background]).all()
    expected = preprocess.normalise(read, rng=np.random.default_rng([11, 1000042]))
    np.testing.assert_array_equal(cached[~background], expected[~background].astype(np.float16))
    # The evaluation input is the volume the cache used to hold: noise seeded by seed and eid.
    model_input = preprocess.model_input(cached, out, seed=11)
    assert model_input.dtype == np.float32 and np.isfinite(model_input).all()
    np.testing.assert_array_equal(model_input[background], expected[background])
    np.testing.assert_array_equal(model_input[~background], cached[~background])
    assert sorted(p.name for p in out.parent.iterdir()) == ["1000042.npy"]  # no temp file left


def test_the_cache_holds_no_noise_and_the_reads_draw_it(tmp_path):
    volume = body((20, 20, 20))
    for eid in ("1000001", "1000002"):
        write_scaled_int16(tmp_path / f"{eid}_W.nii.gz", volume)
    caches = {}
    for eid, seed in [("1000001", 0), ("1000002", 0), ("1000001", 1)]:
        out = tmp_path / f"{eid}_{seed}.npy"
        preprocess.prepare(tmp_path / f"{eid}_W.nii.gz", out, seed=seed)
        caches[eid, seed] = np.load(out)
    # The same volume makes the same cache whatever the eid and seed: no noise in it.
    np.testing.assert_array_equal(caches["1000001", 0], caches["1000002", 0])
    np.testing.assert_array_equal(caches["1000001", 0], caches["1000001", 1])
    preprocess.prepare(tmp_path / "1000001_W.nii.gz", tmp_path / "again.npy", seed=5)
    np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), caches["1000001", 0])

    cached, background = caches["1000001", 0], volume <= 0
    reads = {
        (eid, seed, epoch): preprocess.model_input(cached, eid, seed, epoch)
        for eid in ("1000001", "1000002")
        for seed in (0, 1)
        for epoch in (None, 1, 2)
    }
    for key, read in reads.items():
        np.testing.assert_array_equal(read[~background], cached[~background])  # foreground kept
        np.testing.assert_array_equal(read, preprocess.model_input(cached, *key))  # reproducible
        noise = read[background]
        assert abs(noise.mean()) < 0.05 and noise.std() == pytest.approx(1.0, abs=0.05)
    keys = list(reads)
    for i, a in enumerate(keys):  # every participant, seed and epoch its own noise
        for b in keys[i + 1 :]:
            assert not np.array_equal(reads[a][background], reads[b][background]), (a, b)


def test_model_input_of_a_zero_background_cache_is_the_cache(tmp_path):
    volume = body()
    water = tmp_path / "1000007_W.nii.gz"
    write_scaled_int16(water, volume)
    out = tmp_path / "1000007.npy"
    preprocess.prepare(water, out, background="zero")
    cached = np.load(out)
    assert (cached[volume <= 0] == 0).all() and np.isfinite(cached).all()
    for epoch in (None, 3):
        np.testing.assert_array_equal(preprocess.model_input(cached, out, 0, epoch), cached)


def test_model_input_refuses_an_epoch_below_one():
    with pytest.raises(ValueError, match="epoch"):
        preprocess.model_input(np.zeros((2, 2, 2), np.float16), "1000001", 0, 0)


def test_prepare_names_the_file_with_nan(tmp_path):
    volume = body()
    volume[5, 5, 5] = np.nan
    water = tmp_path / "1000003_W.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(water))
    out = tmp_path / "1000003.npy"
    with pytest.raises(ValueError, match=r"1000003_W\.nii\.gz has 1 NaN/inf voxel"):
        preprocess.prepare(water, out)
    assert list(tmp_path.glob("*.npy")) == []
