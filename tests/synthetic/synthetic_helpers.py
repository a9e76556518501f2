"""Helpers shared by the synthetic-cohort tests: write a participant's zip and read it back."""

from __future__ import annotations

import io
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ageatlas.core import field20201 as layout
from ageatlas.synthetic.dicom import write_participant_zip
from ageatlas.synthetic.phantom import AGE_LABELS, REGION_LABELS

SCALE = 0.2
SEED = 7
AGE_VALUES = list(AGE_LABELS)
LABEL = {name: v for v, name in REGION_LABELS.items()}


def read_zip(path: Path) -> dict[int, list[pydicom.Dataset]]:
    """DICOM members by SeriesNumber, slices sorted head to foot; other members skipped."""
    series = defaultdict(list)
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            try:
                ds = pydicom.dcmread(io.BytesIO(zf.read(name)))
            except InvalidDicomError:
                continue
            series[int(ds.SeriesNumber)].append(ds)
    for slices in series.values():
        slices.sort(key=lambda d: -float(d.ImagePositionPatient[2]))
    return dict(series)


def volume(slices) -> np.ndarray:
    """(columns, rows, slices) array, as in ageatlas.ingest.volume.StationVolume."""
    return np.stack([d.pixel_array.T for d in slices], axis=2).astype(np.float64)


def lps_axes(slices):
    """World LPS coordinates of the columns, rows and slices of an axial series, from its tags."""
    d = slices[0]
    x0, y0, _ = map(float, d.ImagePositionPatient)
    dy, dx = map(float, d.PixelSpacing)
    x = x0 + dx * np.arange(int(d.Columns))
    y = y0 + dy * np.arange(int(d.Rows))
    z = np.array([float(s.ImagePositionPatient[2]) for s in slices])
    return x, y, z


def station_series(series, station: int) -> dict[str, list]:
    first = 4 * (station - 1) + 1
    return {c: series[first + i] for i, c in enumerate(layout.CONTRASTS)}


def slab(slices) -> tuple[float, float]:
    """(bottom, top) slab edges along z."""
    z = [float(s.ImagePositionPatient[2]) for s in slices]
    dz = float(slices[0].SpacingBetweenSlices)
    return min(z) - dz / 2, max(z) + dz / 2


def write(tmp_path, participant, name="p.zip", **kwargs) -> Path:
    path = tmp_path / name
    kwargs.setdefault("scale", SCALE)
    kwargs.setdefault("seed", SEED)
    write_participant_zip(path, participant, **kwargs)
    return path
