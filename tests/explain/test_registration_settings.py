"""Tests for ageatlas.explain.registration_settings: defaults, millimetres to voxels, checks."""

from __future__ import annotations

import pytest

from ageatlas.explain.registration_settings import (
    RegistrationSettings,
    lncc_kernel_for,
    settings_from_config,
    stride_for,
)


def test_defaults_match_method_notes():
    s = RegistrationSettings()
    assert (s.affine_iterations, s.affine_lr, s.levels, s.finest_level) == (200, 0.01, 3, 0)
    assert (s.bending_weight, s.deformable_lr, s.max_steps) == (0.01, 1e-3, 1000)
    assert (s.scaling_squaring_steps, s.clip) == (5, 0.6)
    # In millimetres, they are the authors' voxel choices at UK Biobank's full grid.
    ukbb = (2.232, 2.232, 3.0)
    assert s.stride_for(ukbb) == (4, 4, 8)
    assert s.lncc_kernel_for(ukbb) == (7, 7, 7)


def test_control_point_spacing_to_stride():
    assert stride_for((8.928, 8.928, 24.0), (2.232, 2.232, 3.0)) == (4, 4, 8)
    # The demo grid at half resolution (level 1): the old stride (4, 4, 8) was 71 x 71 x 192 mm.
    assert stride_for((36.0, 36.0, 48.0), (17.86, 17.86, 24.0)) == (2, 2, 2)
    assert stride_for((9.0, 9.0, 24.0), (17.86, 17.86, 24.0)) == (1, 1, 1)  # at least 1
    assert stride_for((30.0, 30.0, 30.0), (8.0, 12.0, 20.0)) == (4, 2, 2)  # nearest


def test_lncc_window_to_odd_kernel_per_level():
    window = (15.624, 15.624, 21.0)
    assert lncc_kernel_for(window, (2.232, 2.232, 3.0)) == (7, 7, 7)
    assert lncc_kernel_for(window, (4.464, 4.464, 6.0)) == (3, 3, 3)  # 3.5 voxels -> 3
    assert lncc_kernel_for(window, (8.928, 8.928, 12.0)) == (3, 3, 3)  # at least 3
    assert lncc_kernel_for((40.0, 40.0, 40.0), (8.0, 6.0, 4.0)) == (5, 7, 11)
    assert all(k % 2 == 1 for k in lncc_kernel_for((30.0,) * 3, (4.0, 5.0, 6.0)))
    # never wider than the grid
    assert RegistrationSettings(lncc_window_mm=(80.0,) * 3).lncc_kernel_for(
        (2.0,) * 3, (9, 8, 50)
    ) == (9, 7, 41)


def test_settings_validation_errors():
    with pytest.raises(ValueError, match="finest_level must be in"):
        RegistrationSettings(levels=2, finest_level=2)
    with pytest.raises(ValueError, match="levels must be at least 1"):
        RegistrationSettings(levels=0)
    with pytest.raises(ValueError, match="control_point_spacing_mm must be 3 positive"):
        RegistrationSettings(control_point_spacing_mm=(9.0, 0.0, 24.0))
    with pytest.raises(ValueError, match="lncc_window_mm must be 3 positive"):
        RegistrationSettings(lncc_window_mm=(15.0, 15.0))
    with pytest.raises(ValueError, match="not both"):
        settings_from_config({"stride": [4, 4, 8], "control_point_spacing_mm": [9, 9, 24]})
    with pytest.raises(ValueError, match="not both"):
        settings_from_config({"lncc_kernel": 3, "lncc_window_mm": [15, 15, 21]})


def test_warmup_steps_is_checked():
    with pytest.raises(ValueError, match="warmup_steps"):
        RegistrationSettings(warmup_steps=-1)


def test_affine_level_is_checked():
    with pytest.raises(ValueError, match="affine_level must be in"):
        RegistrationSettings(levels=2, affine_level=2)
    assert RegistrationSettings(levels=3, finest_level=1).affine_fit_level == 1
    assert RegistrationSettings(levels=3, finest_level=1, affine_level=0).affine_fit_level == 0


@pytest.mark.parametrize("axes", [(), ("x", "x"), ("x", "w")])
def test_pyramid_axes_are_checked(axes):
    with pytest.raises(ValueError, match="pyramid_axes must be distinct axes"):
        RegistrationSettings(pyramid_axes=axes)


def test_settings_from_config_ignores_other_keys():
    settings = settings_from_config(
        {
            "control_point_spacing_mm": [18, 18, 24],
            "lncc_window_mm": [20, 20, 20],
            "levels": 2,
            "max_folding_share": 0.1,
            "gpus": 1,
        }
    )
    assert settings.control_point_spacing_mm == (18.0, 18.0, 24.0) and settings.levels == 2
    assert settings.lncc_window_mm == (20.0, 20.0, 20.0) and settings.stride is None


def test_voxel_settings_still_read_and_win():
    settings = settings_from_config({"stride": [2, 2, 4], "lncc_kernel": 3, "levels": 2})
    assert settings.stride == (2, 2, 4) and settings.levels == 2
    assert settings.stride_for((1.0, 1.0, 1.0)) == (2, 2, 4)
    assert settings.lncc_kernel_for((1.0, 1.0, 1.0)) == (3, 3, 3)
