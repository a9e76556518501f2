"""Truth files: each participant's region label map on a regular grid, and the label table."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ageatlas.synthetic.acquisition import station_grids
from ageatlas.synthetic.participants import SyntheticParticipant
from ageatlas.synthetic.phantom import AGE_REGIONS, REGION_LABELS, region_labels


def region_table() -> pd.DataFrame:
    """Label value, region name and whether biological age changes the region."""
    return pd.DataFrame(
        {
            "value": list(REGION_LABELS),
            "name": list(REGION_LABELS.values()),
            "age_region": [int(name in AGE_REGIONS) for name in REGION_LABELS.values()],
        }
    )


def _truth_grid(spacing_mm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Regular LPS grid covering every station's field of view (z ascending)."""
    full = station_grids(1.0)
    half_x = max(g.columns * g.dx for g in full) / 2
    half_y = max(g.rows * g.dy for g in full) / 2
    z_lo = min(g.z[-1] - g.dz / 2 for g in full)
    z_hi = max(g.z_top + g.dz / 2 for g in full)
    axes = []
    for lo, hi, step in (
        (-half_x, half_x, spacing_mm[0]),
        (-half_y, half_y, spacing_mm[1]),
        (z_lo, z_hi, spacing_mm[2]),
    ):
        n = int(np.ceil((hi - lo) / step - 1e-3))
        axes.append(lo + step / 2 + np.arange(n) * step)
    return tuple(axes)


def write_label_map(
    out_dir: str | Path, participant: SyntheticParticipant, *, spacing_mm=(4.0, 4.0, 4.0)
) -> Path:
    """Write ``{eid}_regions.nii.gz`` (uint8), the participant's region labels.

    It covers every station's field of view on a regular grid; its affine
    maps voxels to RAS mm (x_RAS = -x_LPS, y_RAS = -y_LPS), in the same world
    frame as the DICOM ImagePositionPatient, with voxel axes along patient
    left, posterior and superior.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x, y, z = _truth_grid(tuple(float(v) for v in spacing_mm))
    labels = region_labels(participant, x, y, z)
    affine = np.diag([-(x[1] - x[0]), -(y[1] - y[0]), z[1] - z[0], 1.0])
    affine[:3, 3] = (-x[0], -y[0], z[0])
    image = nib.Nifti1Image(labels, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    label_map = out / f"{participant.eid}_regions.nii.gz"
    nib.save(image, label_map)
    return label_map


def write_label_table(out_dir: str | Path) -> Path:
    """Write ``regions.tsv``: value, name and age_region (0/1) of every label."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    label_table = out / "regions.tsv"
    region_table().to_csv(label_table, sep="\t", index=False)
    return label_table


__all__ = [
    "region_table",
    "write_label_map",
    "write_label_table",
]
