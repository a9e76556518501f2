"""The in-memory hand-over between reading a zip and stitching it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class StationVolume:
    """One station's Dixon contrasts on one voxel grid.

    ``images`` maps a contrast name ("W", "F", "in", "opp") to a float32 array
    indexed (i, j, k) = (DICOM column, DICOM row, slice), slices ordered along
    +k of ``affine``. ``affine`` is the 4x4 NIfTI-convention matrix mapping
    voxel (i, j, k) to RAS+ millimetres (DICOM LPS already converted).
    """

    index: int  # station number after sorting head to foot, 1-based
    images: dict[str, np.ndarray]
    affine: np.ndarray
    series_time: str = ""  # SeriesTime (HHMMSS.ffffff) of the kept acquisition
    notes: list[str] = field(default_factory=list)  # tolerated oddities, for QC

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.images.values())).shape

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)
