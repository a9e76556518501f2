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
