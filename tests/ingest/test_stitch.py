"""ageatlas.ingest.stitch: stations stitched onto one grid, end to end."""

from __future__ import annotations

import numpy as np
import pytest
from station_helpers import GRID, LINEAR, four_stations, grid_world

from ageatlas.core.qc import ParticipantExcluded
from ageatlas.ingest.stitch import StitchOptions, stitch


@pytest.mark.parametrize("oblique", [False, True])
def test_linear_world_function_reproduced_exactly(oblique):
    stations = four_stations(LINEAR, oblique=oblique)
    shuffled = [stations[i] for i in (2, 0, 3, 1)]  # order must come from the affines
    result = stitch(shuffled, GRID)
    x, y, z = grid_world(result)
    for c, fn in LINEAR.items():
        out = result.images[c]
        assert out.shape == GRID.shape and out.dtype == np.float32
        assert out.flags.f_contiguous
        np.testing.assert_allclose(out, fn(x, y, z), atol=0.02)
    assert result.swapped_stations == []
    assert any("oblique" in n for n in result.info) == oblique


def test_outputs_optional_contrasts_and_rejects_missing_ones():
    fns = {**LINEAR, "in": lambda x, y, z: LINEAR["W"](x, y, z) + LINEAR["F"](x, y, z)}
    result = stitch(four_stations(fns), GRID, StitchOptions(contrasts=("W", "F", "in")))
    np.testing.assert_allclose(
        result.images["in"], result.images["W"] + result.images["F"], rtol=1e-5
    )
    with pytest.raises(ParticipantExcluded, match="lacks contrast"):
        stitch(four_stations(LINEAR), GRID, StitchOptions(contrasts=("W", "opp")))
