"""Station grids and image formation: per-station gain, bias field, folding ghost and noise.

Slab positions (``STATION_TOP_SLICE_Z_MM``) put station 1 highest (+z is superior) and give each
junction 31.5-33.5 mm of slice-centre overlap (36-37.5 mm of slab overlap); the slabs cover
z = -999.5..111 mm (1110.5 mm), so a 370 x 3.0 mm grid spans them. ``scale`` keeps every
station's field of view and shrinks its matrix: each of columns, rows and slices becomes
``max(1, round(n * scale))`` and the spacing grows to match, so extents and slab edges do not
move.

In-phase is W + F, opposed-phase |W - F|. Each station gets its own gain (``GAIN_RANGE``), a
smooth multiplicative bias field, a bright folding ghost in its end slices (the body outline of
the opposite slab end) and Rician noise, independently per contrast. All of it is deterministic
for (participant, seed); anatomy depends on the participant alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ageatlas.core import field20201 as layout
from ageatlas.synthetic.anatomy import Body
from ageatlas.synthetic.phantom import paint, water_fat

#: z (LPS mm) of each station's most superior slice centre at full resolution.
STATION_TOP_SLICE_Z_MM = (109.5, -46.5, -208.5, -370.5, -530.5, -745.5)
INTENSITY = 2000.0  # stored value of unit tissue signal at gain 1
GAIN_RANGE = (0.8, 1.25)  # per-station receive gain
BIAS_SD = 0.08  # s.d. of the log bias-field polynomial coefficients
NOISE_SD = 0.02  # Gaussian s.d. of each quadrature channel, relative to INTENSITY
FOLD_SLICES = 2  # end slices with a folding ghost at full resolution
FOLD_GHOST = 0.3  # ghost level relative to INTENSITY
STATION_INTERVAL_S = 75.0  # time between station starts
MAX_STORED = 4095  # BitsStored 12


@dataclass(frozen=True)
class Grid:
    """One station's voxel grid at a given scale, in world LPS mm."""

    spec: layout.StationSpec
    columns: int
    rows: int
    slices: int
    dx: float  # column spacing (along +x)
    dy: float  # row spacing (along +y)
    dz: float
    z_top: float  # centre of the most superior slice

    @property
    def x(self) -> np.ndarray:  # first pixel at -FOV/2, as in the real data
        return -self.columns * self.dx / 2 + np.arange(self.columns) * self.dx

    @property
    def y(self) -> np.ndarray:
        return -self.rows * self.dy / 2 + np.arange(self.rows) * self.dy

    @property
    def z(self) -> np.ndarray:  # slice k = InstanceNumber - 1, head to foot
        return self.z_top - np.arange(self.slices) * self.dz


def station_grids(scale: float) -> tuple[Grid, ...]:
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    grids = []
    for spec, top in zip(layout.STATIONS, STATION_TOP_SLICE_Z_MM):
        n = [max(1, round(v * scale)) for v in (spec.columns, spec.rows, spec.slices)]
        fov = (spec.columns * layout.PIXEL_SPACING_MM, spec.rows * layout.PIXEL_SPACING_MM,
               spec.slices * spec.slice_spacing_mm)  # fmt: skip
        dx, dy, dz = (f / k for f, k in zip(fov, n))
        slab_top = top + spec.slice_spacing_mm / 2
        grids.append(Grid(spec, *n, dx, dy, dz, slab_top - dz / 2))
    return tuple(grids)


def _bias_field(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Smooth log-quadratic receive field, one per station."""
    c = rng.normal(0.0, BIAS_SD, 6).astype(np.float32)
    xn = (grid.x / 250.0).astype(np.float32)[:, None]
    yn = (grid.y / 200.0).astype(np.float32)[None, :]
    half = max(grid.slices * grid.dz / 2, 1.0)
    zn = ((grid.z - (grid.z_top - (grid.slices - 1) * grid.dz / 2)) / half).astype(np.float32)
    plane = c[0] * xn + c[1] * yn + c[2] * xn * xn + c[3] * yn * yn + c[4] * xn * yn
    return np.exp(plane[:, :, None] + (c[5] * zn)[None, None, :])


def _fold_ghost(body_mask: np.ndarray, n_fold: int) -> np.ndarray:
    """Wrap-around along z: the end slices pick up the body outline of the opposite slab end."""
    ghost = np.zeros(body_mask.shape, np.float32)
    n = body_mask.shape[2]
    for k in range(min(n_fold, n)):
        weight = 1.0 / (k + 1)
        ghost[:, :, k] += weight * body_mask[:, :, n - 1 - k]
        ghost[:, :, n - 1 - k] += weight * body_mask[:, :, k]
    return ghost


def station_water_fat(body: Body, grid: Grid, rng: np.random.Generator, n_fold: int):
    cv = paint(body, grid.x, grid.y, grid.z)
    water, fat = water_fat(cv)
    gain = rng.uniform(*GAIN_RANGE)
    field = _bias_field(grid, rng) * np.float32(gain * INTENSITY)
    ghost = _fold_ghost(cv.labels != 0, n_fold) * np.float32(FOLD_GHOST * INTENSITY * gain / 2)
    return water * field + ghost, fat * field + ghost


def contrasts(water, fat, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The four Dixon contrasts, each with its own Rician noise, as 12-bit integers."""
    sources = {"in": water + fat, "opp": np.abs(water - fat), "F": fat, "W": water}
    sd = np.float32(NOISE_SD * INTENSITY)
    out = {}
    for name in layout.CONTRASTS:
        s = sources[name]
        real = s + sd * rng.standard_normal(s.shape, np.float32)
        imag = sd * rng.standard_normal(s.shape, np.float32)
        out[name] = np.clip(np.rint(np.sqrt(real * real + imag * imag)), 0, MAX_STORED).astype(
            np.uint16
        )
    return out


def motion_corrupt(image: np.ndarray, rows: int) -> np.ndarray:
    """Phase-encode (row) ghosts and a gain drop: a visibly worse first acquisition."""
    shift = max(1, rows // 6)
    return 0.7 * (0.65 * image + 0.35 * np.roll(image, shift, axis=1))


# ImageOrientationPatient: every series is axial; CORONAL comes only with the
# bad_orientation defect.
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


@dataclass
class Series:
    """One Dixon contrast of one station as acquired, before it is written as DICOM slices."""

    grid: Grid
    contrast: str
    number: int
    time_s: float  # seconds after midnight
    pixels: np.ndarray  # uint16 (columns, rows, slices)
    orientation: tuple[float, ...] = AXIAL

    @property
    def description(self) -> str:
        return layout.series_description(self.grid.spec, self.contrast)
