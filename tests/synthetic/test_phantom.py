"""The phantom can be sampled on grids running either way along each axis."""

from __future__ import annotations

import numpy as np
import pytest

from ageatlas.synthetic.phantom import region_labels


def test_phantom_grids_may_run_either_way(participant):
    x, y, z = (
        np.arange(-240.0, 240.0, 16.0),
        np.arange(-180.0, 180.0, 16.0),
        np.arange(-900.0, 100.0, 20.0),
    )
    labels = region_labels(participant, x, y, z)
    assert np.array_equal(
        region_labels(participant, x[::-1], y[::-1], z[::-1]), labels[::-1, ::-1, ::-1]
    )
    with pytest.raises(ValueError):
        region_labels(participant, np.r_[x, 0.0], y, z)


def test_a_table_offset_moves_the_whole_body_in_the_scanner(participant):
    """Positioning on the table shifts every label by the offset, nothing else changes."""
    from dataclasses import replace

    x, y, z = (
        np.arange(-240.0, 240.0, 4.0),
        np.arange(-180.0, 180.0, 4.0),
        np.arange(-900.0, 100.0, 4.0),
    )
    here = region_labels(participant, x, y, z)
    moved = region_labels(replace(participant, table_offset_mm=(8.0, -4.0, 20.0)), x, y, z)
    # body point p sits at world p + offset: voxel i of `here` is voxel i + (2, -1, 5) of `moved`
    assert np.array_equal(moved[12:-12, 12:-12, 25:-25], here[10:-14, 13:-11, 20:-30])
    assert not np.array_equal(moved, here)
