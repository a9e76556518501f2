"""Atomic writers and the one NIfTI header convention."""

import nibabel as nib
import numpy as np
import pytest

from ageatlas.core.files import nifti_image, save_nifti, save_npy


def test_a_failed_write_leaves_neither_cache_nor_temp_file(tmp_path, monkeypatch):
    out = tmp_path / "1000004.npy"
    out.write_bytes(b"old cache")

    def full_disk(file, array, *args, **kwargs):  # writes half a file, then fails
        if isinstance(file, (str, type(out))):
            file = open(file, "wb")
        file.write(b"\x93NUMPY half")
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_npy(out, np.zeros((2, 2, 2), np.float16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1000004.npy"]
    assert out.read_bytes() == b"old cache"


def test_save_nifti_int16_keeps_intensities_and_geometry(tmp_path):
    rng = np.random.default_rng(0)
    image = (rng.random((8, 6, 5)) * 3000).astype(np.float32)
    affine = np.diag([2.232, 2.232, 3.0, 1.0])
    affine[:3, 3] = [-250, -190, -1000]
    save_nifti(tmp_path / "x.nii.gz", nifti_image(image, affine, "test", dtype=np.int16))
    back = nib.load(tmp_path / "x.nii.gz")
    assert back.get_data_dtype() == np.int16
    assert np.abs(back.get_fdata() - image).max() < 3000 / 30000
    assert np.allclose(back.affine, affine) and int(back.header["sform_code"]) == 1
