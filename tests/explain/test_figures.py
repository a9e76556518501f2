"""Tests for ageatlas.explain.figures: figures are written and slice where the maps peak."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from ageatlas.explain.figures import _cuts, class_test_panels, examples_panels, importance_panels

SHAPE = (20, 16, 30)
AFFINE = np.diag([3.0, 3.0, 4.0, 1.0])


def _img(data):
    return nib.Nifti1Image(np.asarray(data, np.float32), AFFINE)


def _atlas():
    grid = np.indices(SHAPE)
    body = ((grid[0] - 10) / 8) ** 2 + ((grid[1] - 8) / 6) ** 2 + ((grid[2] - 15) / 13) ** 2 < 1
    return _img(body * 1.0)


def _hotspot(i, j, k):
    data = np.zeros(SHAPE)
    data[i - 1 : i + 2, j - 1 : j + 2, k - 1 : k + 2] = 0.5
    data[i, j, k] = 1.0
    return data


def test_cuts_go_through_the_peak_or_the_body_centre():
    assert _cuts([_hotspot(5, 9, 22)]) == (5, 9, 22)
    body = np.asarray(_atlas().dataobj) > 0
    # sagittal and coronal through the body's centre, axial at the peak inside the body
    assert _cuts([_hotspot(5, 9, 22)], body) == (10, 8, 22)


def test_importance_panels_writes_a_figure_with_empty_rows(tmp_path):
    path = tmp_path / "fig.png"
    atlas = _atlas()
    importance_panels(
        [atlas, atlas], [_img(_hotspot(5, 9, 22)), None], ["a (n=3)", "b (n=0)"], path
    )
    assert path.stat().st_size > 5000


def test_class_test_and_examples_figures(tmp_path):
    atlas = _atlas()
    t = _img(_hotspot(10, 8, 15) * 4.0)
    significant = nib.Nifti1Image((_hotspot(10, 8, 15) > 0).astype(np.uint8), AFFINE)
    class_test_panels(atlas, t, significant, tmp_path / "t.png", title="test")
    examples_panels(
        atlas,
        {"accelerated": [("1: gap +5", _img(_hotspot(10, 8, 15)))], "decelerated": []},
        tmp_path / "ex.png",
    )
    assert (tmp_path / "t.png").stat().st_size > 5000 and (
        tmp_path / "ex.png"
    ).stat().st_size > 2000
