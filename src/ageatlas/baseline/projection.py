"""2.5D projections of the stitched water and fat volumes: the input of the baseline (Langner et al.
2019).

Per participant, both volumes are reoriented to RAS from their affine (so
data stored LPS, or with permuted axes, give the same image), the scanner
bed is cut off the posterior end of the anterior-posterior axis, and each
volume is summed along anterior-posterior (coronal view) and along
left-right (sagittal view). Each view of each contrast is min-max scaled to
[0, 1] on its own, each view is resized to its share of the output width
(proportional to its number of voxels across, so no interpolation blends the
two views at the seam), and the views are put side by side: coronal left,
sagittal right. Like Langner's, the 256 x 256 output does not keep the
body's proportions. Result: float32 (2, H, W), channels [water, fat].

Image orientation (row 0 at the top):

- head at the top in both views;
- coronal view as seen from the front, radiological convention: the
  patient's right is on the image's left;
- sagittal view as seen from the patient's left side: anterior is on the
  image's left (the body faces left, towards the coronal view).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from ageatlas.core.files import save_npy
from ageatlas.core.paths import stitched_path

CONTRASTS = ("W", "F")
DTYPES = ("float16", "float32")
# Langner cut 22 voxels of 2.232 mm at the posterior side.
DEFAULT_BED_MM = 22 * 2.232


@dataclass(frozen=True)
class ProjectionOptions:
    bed_mm: float = DEFAULT_BED_MM  # scanner bed cut off the posterior side
    bed_voxels: int | None = None  # when given, overrides bed_mm
    size: tuple[int, int] = (256, 256)  # (rows, columns) of the output
    dtype: str = "float16"  # of the saved .npy

    @classmethod
    def from_config(cls, cfg: dict) -> ProjectionOptions:
        """From the workflow's `projection:` section."""
        fields = {k: cfg[k] for k in ("bed_mm", "bed_voxels", "size", "dtype") if k in cfg}
        if "size" in fields:
            fields["size"] = tuple(int(s) for s in fields["size"])
        return cls(**fields)

    def bed(self, spacing_ap: float) -> int:
        """Voxels to cut at the posterior end for an A-P spacing in mm."""
        if self.bed_voxels is not None:
            if self.bed_voxels < 0:
                raise ValueError(f"bed_voxels must be >= 0, not {self.bed_voxels}")
            return int(self.bed_voxels)
        if self.bed_mm < 0:
            raise ValueError(f"bed_mm must be >= 0, not {self.bed_mm}")
        return int(round(self.bed_mm / spacing_ap))


def to_ras(image: nib.spatialimages.SpatialImage) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Voxels (scaled, float32) reoriented to RAS, and their spacing in mm.

    Axes: left -> right, posterior -> anterior, inferior -> superior, read
    from the affine (nearest axes for an oblique one).
    """
    canonical = nib.as_closest_canonical(image)
    volume = canonical.get_fdata(dtype=np.float32)
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
    return volume, tuple(float(z) for z in canonical.header.get_zooms()[:3])


def upright_views(volume: np.ndarray, bed: int) -> tuple[np.ndarray, np.ndarray]:
    """(coronal, sagittal) sums of a RAS volume after cutting `bed` posterior voxels; head up.

    Coronal: rows superior -> inferior, columns patient's right -> left.
    Sagittal: rows superior -> inferior, columns anterior -> posterior.
    """
    if not 0 <= bed < volume.shape[1]:
        raise ValueError(f"cutting {bed} bed voxels leaves nothing of {volume.shape[1]} along A-P")
    body = volume[:, bed:, :]  # RAS: index 0 of axis 1 is the posterior end
    coronal = body.sum(axis=1, dtype=np.float64)  # (L->R, I->S)
    sagittal = body.sum(axis=0, dtype=np.float64)  # (P->A, I->S)
    # Transpose to (I->S, .) and reverse both axes: superior row first, then R or A column first.
    return coronal.T[::-1, ::-1], sagittal.T[::-1, ::-1]


def min_max(view: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant view (no information) becomes zeros rather than NaN."""
    low, high = float(view.min()), float(view.max())
    if high <= low:
        return np.zeros(view.shape, np.float32)
    return ((view - low) / (high - low)).astype(np.float32)


def view_widths(coronal_columns: int, sagittal_columns: int, width: int) -> tuple[int, int]:
    """Output columns of each view, in proportion to their voxels across (each at least 1)."""
    left = int(round(width * coronal_columns / (coronal_columns + sagittal_columns)))
    left = min(max(left, 1), width - 1)
    return left, width - left


def _resize(view: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear, antialiased (the 370 slices of a full-size volume shrink to 256 rows).

    Pillow's float resampling, the same numbers as torch's interpolate with
    antialias=True, without importing torch in a per-participant job.
    """
    image = Image.fromarray(np.ascontiguousarray(view, dtype=np.float32))
    return np.clip(np.asarray(image.resize(size[::-1], Image.Resampling.BILINEAR)), 0, 1)


def project_volumes(
    water: np.ndarray,
    fat: np.ndarray,
    affine: np.ndarray,
    options: ProjectionOptions = ProjectionOptions(),
) -> np.ndarray:
    """Projections (2, H, W) float32 in [0, 1] of two volumes on one grid with voxel-to-world
    `affine`."""
    if np.shape(water) != np.shape(fat):
        raise ValueError(f"water {np.shape(water)} and fat {np.shape(fat)} differ in shape")
    return project_images(
        nib.Nifti1Image(np.asarray(water, np.float32), affine),
        nib.Nifti1Image(np.asarray(fat, np.float32), affine),
        options,
    )


def project_images(
    water: nib.spatialimages.SpatialImage,
    fat: nib.spatialimages.SpatialImage,
    options: ProjectionOptions = ProjectionOptions(),
) -> np.ndarray:
    """`project_volumes` for two loaded images (NIfTI); they must share their grid."""
    return _project(water, fat, options)[0]


def _project(
    water: nib.spatialimages.SpatialImage,
    fat: nib.spatialimages.SpatialImage,
    options: ProjectionOptions,
) -> tuple[np.ndarray, int]:
    """The projections and the number of bed voxels cut."""
    if water.shape != fat.shape or not np.allclose(water.affine, fat.affine, atol=1e-3):
        raise ValueError("water and fat images are not on the same grid (shape or affine differ)")
    rows, width = (int(s) for s in options.size)
    channels = []
    for image in (water, fat):
        volume, spacing = to_ras(image)
        if not np.isfinite(volume).all():
            raise ValueError("volume has NaN/inf voxels")
        bed = options.bed(spacing[1])
        coronal, sagittal = upright_views(volume, bed)
        widths = view_widths(coronal.shape[1], sagittal.shape[1], width)
        channels.append(
            np.concatenate(
                [_resize(min_max(view), (rows, w)) for view, w in zip((coronal, sagittal), widths)],
                axis=1,
            )
        )
    return np.stack(channels), bed


def save_projection(path: str | Path, image: np.ndarray, dtype: str = "float16") -> None:
    """Write (2, H, W) as .npy in `dtype` (float16 holds [0, 1] to 1e-3), atomically."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    save_npy(path, np.asarray(image).astype(dtype))


def save_preview(image: np.ndarray, path: str | Path) -> None:
    """A grey PNG of the (2, H, W) projection as the model sees it: water | fat, each coronal |
    sagittal."""
    panels = np.concatenate(list(np.asarray(image, np.float32)), axis=1)
    Image.fromarray(np.round(np.clip(panels, 0, 1) * 255).astype(np.uint8)).save(path)


def load_projection(path: str | Path) -> np.ndarray:
    """A saved projection as float32 (2, H, W)."""
    image = np.load(path).astype(np.float32)
    if image.ndim != 3 or image.shape[0] != len(CONTRASTS):
        raise ValueError(f"{path} holds shape {image.shape}, not ({len(CONTRASTS)}, H, W)")
    return image


def project_participant(
    stitched_dir: str | Path,
    eid: str,
    out_path: str | Path,
    preview_path: str | Path | None = None,
    options: ProjectionOptions = ProjectionOptions(),
) -> dict:
    """Stitched W and F NIfTIs of one participant -> projection .npy (and PNG preview); returns what
    to log."""
    start = time.perf_counter()
    water, fat = (nib.load(str(stitched_path(stitched_dir, eid, c))) for c in CONTRASTS)
    image, bed = _project(water, fat, options)
    save_projection(out_path, image, options.dtype)
    if preview_path is not None:
        save_preview(image, preview_path)
    return {
        "shape": list(image.shape),
        "bed_voxels": bed,
        "seconds": round(time.perf_counter() - start, 3),
    }
