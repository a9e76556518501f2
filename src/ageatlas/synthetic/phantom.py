"""The phantom painted on a grid: region labels and noise-free water and fat signal.

A continuous body in world millimetres (LPS), sampled at voxel centres, so the stations agree
where they overlap and the truth label map agrees with the DICOM geometry. Neck, shoulders, arms
beside the trunk, thorax, abdomen, pelvis and two separate thighs down past the knees; lungs,
heart, aorta, liver, kidneys, bladder, a spine of vertebral bodies and intervertebral discs with
its canal, autochthonous back muscles, psoas, femurs, tibiae, pelvic bones (shapes and age
effects: :mod:`ageatlas.synthetic.anatomy`).

Labels (``REGION_LABELS``) are anatomical compartments whose geometry depends on sex, BMI and eid
only; biological age changes what fills four of them (``AGE_REGIONS``). Water and fat images are
tissue signal times (1 - fat fraction) and times fat fraction.
"""

from __future__ import annotations

import numpy as np

from ageatlas.synthetic.anatomy import (
    CARINA,
    CAVITY_TOP,
    DISC_COMPARTMENT,
    DOME_DEPTH,
    ILIUM_TAPER,
    LAST_DISC_LEVEL,
    LUNG_DOME,
    LUNG_TAPER,
    LUNG_TOP,
    PELVIC_FLOOR,
    PSOAS_R,
    SPINE_BOTTOM,
    THIGH_TOP,
    TRUNK_BOTTOM,
    VISCERA_TOP,
    Body,
    interp,
)
from ageatlas.synthetic.participants import SyntheticParticipant

#: Truth label values. Geometry depends on sex, BMI and eid, never on age.
REGION_LABELS: dict[int, str] = {
    0: "background",
    1: "subcutaneous_fat",
    2: "muscle",
    3: "back_muscle",
    4: "visceral_fat",
    5: "viscera",
    6: "lung",
    7: "heart",
    8: "aorta",
    9: "liver",
    10: "kidney",
    11: "bladder",
    12: "vertebra",
    13: "intervertebral_disc",
    14: "spinal_canal",
    15: "bone",
    16: "bone_marrow",
    17: "airway",
}
#: Regions whose content changes with biological age.
AGE_REGIONS: tuple[str, ...] = ("intervertebral_disc", "back_muscle", "heart", "aorta")
#: Their label values.
AGE_LABELS: tuple[int, ...] = tuple(v for v, name in REGION_LABELS.items() if name in AGE_REGIONS)
_L = {name: value for value, name in REGION_LABELS.items()}


# Tissue signal (unit = INTENSITY) and fat fraction per label; age regions and
# muscle/liver (BMI dependent) are filled in per body.
_TISSUE = {
    "subcutaneous_fat": (0.95, 0.94),
    "visceral_fat": (0.92, 0.92),
    "viscera": (0.55, 0.15),
    "lung": (0.04, 0.25),
    "kidney": (0.80, 0.03),
    "bladder": (0.95, 0.0),
    "vertebra": (0.75, 0.55),
    "spinal_canal": (0.95, 0.0),
    "bone": (0.06, 0.3),
    "bone_marrow": (0.92, 0.9),
    "airway": (0.02, 0.0),
}
_BLOOD, _MYOCARDIUM, _FAT_PAD = (0.35, 0.02), (0.75, 0.04), (0.92, 0.9)


class _Canvas:
    """Label and age-core volumes on an axis-aligned LPS grid, painted in anatomical order."""

    def __init__(self, body: Body, x, y, z):
        # World (scanner) coordinates to the body's own: the body lies offset on the table.
        x, y, z = (np.asarray(v, float) - o for v, o in zip((x, y, z), body.table_offset_mm))
        if (
            np.any(np.diff(x) <= 0)
            or np.any(np.diff(y) <= 0)
            or (z.size > 1 and not (np.all(np.diff(z) > 0) or np.all(np.diff(z) < 0)))
        ):
            raise ValueError("grid axes must be strictly monotonic (x and y increasing)")
        self.body, self.x, self.y, self.z = body, x, y, z
        self.X = x.astype(np.float32)[:, None, None]
        self.Y = y.astype(np.float32)[None, :, None]
        self.Z = z.astype(np.float32)[None, None, :]
        self.zr = body.ref_z(z)
        self.s = body.sections(self.zr)
        self.labels = np.zeros((x.size, y.size, z.size), np.uint8)
        self.core = np.zeros(self.labels.shape, bool)

    def box(self, lo, hi, ks=None):
        """Index slices of the grid inside world bounds ``lo``..``hi`` (x, y, z)."""
        i = slice(np.searchsorted(self.x, lo[0]), np.searchsorted(self.x, hi[0], "right"))
        j = slice(np.searchsorted(self.y, lo[1]), np.searchsorted(self.y, hi[1], "right"))
        if ks is None:
            idx = np.flatnonzero((self.z >= lo[2]) & (self.z <= hi[2]))
            ks = slice(idx[0], idx[-1] + 1) if idx.size else slice(0, 0)
        if i.start >= i.stop or j.start >= j.stop or ks.start >= ks.stop:
            return None
        return i, j, ks

    def sub(self, box):
        return self.X[box[0]], self.Y[:, box[1]], self.Z[..., box[2]]

    def col(self, values, box):
        """Per-slice values (full-z array or scalar) shaped to broadcast over ``box``."""
        v = np.broadcast_to(np.asarray(values, np.float32), self.z.shape)
        return v[box[2]][None, None, :]

    def ellipses(self, zr_lo, zr_hi, cx, cy, a, b):
        """Per-slice ellipses between two reference heights: (box, squared normalised radius)."""
        idx = np.flatnonzero((self.zr >= zr_lo) & (self.zr <= zr_hi))
        if idx.size == 0:
            return None, None
        ks = slice(idx[0], idx[-1] + 1)
        cx, cy, a, b = (
            np.broadcast_to(np.asarray(v, float), self.z.shape)[ks] for v in (cx, cy, a, b)
        )
        a, b = np.maximum(a, 0.5), np.maximum(b, 0.5)
        box = self.box(((cx - a).min(), (cy - b).min()), ((cx + a).max(), (cy + b).max()), ks)
        if box is None:
            return None, None
        X, Y, _ = self.sub(box)
        c = lambda v: v.astype(np.float32)[None, None, :]  # noqa: E731
        return box, ((X - c(cx)) / c(a)) ** 2 + ((Y - c(cy)) / c(b)) ** 2

    def ellipsoid(self, centre, radii, box=None):
        box = box or self.box(centre - radii, centre + radii)
        if box is None:
            return None, None
        X, Y, Z = self.sub(box)
        r = radii.astype(np.float32)
        c = centre.astype(np.float32)
        return box, ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2

    def tube(self, points, radius):
        """Distance (mm) to a polyline, within its bounding box grown by ``radius``."""
        box = self.box(points.min(0) - radius, points.max(0) + radius)
        if box is None:
            return None, None
        X, Y, Z = self.sub(box)
        d2 = None
        for p0, p1 in zip(points[:-1].astype(np.float32), points[1:].astype(np.float32)):
            v = p1 - p0
            dx, dy, dz = X - p0[0], Y - p0[1], Z - p0[2]
            t = np.clip((dx * v[0] + dy * v[1] + dz * v[2]) / float(v @ v), 0, 1)
            seg = (dx - t * v[0]) ** 2 + (dy - t * v[1]) ** 2 + (dz - t * v[2]) ** 2
            d2 = seg if d2 is None else np.minimum(d2, seg)
        return box, np.sqrt(d2)

    def fill(self, name, box, r2, limit=1.0, core_r2=None, core_limit=1.0):
        """Label a shape where ``r2`` (squared normalised radius, or a distance) <= ``limit``;
        its age core is where ``core_r2`` <= ``core_limit``. No box: nothing of it on this grid."""
        if box is not None:
            self.paint(name, box, r2 <= limit, None if core_r2 is None else core_r2 <= core_limit)

    def paint(self, name, box, mask, core=None):
        if box is None:
            return
        labels = self.labels[box]
        mask = np.broadcast_to(mask, labels.shape)
        labels[mask] = _L[name]
        if core is not None:
            self.core[box][mask] = np.broadcast_to(core, labels.shape)[mask]


def _paint_envelope(cv: _Canvas) -> None:
    """Skin-to-muscle layers of trunk, thighs and arms (all fat first, so lean always wins)."""
    s = cv.s
    for layer, grow in (("subcutaneous_fat", 1.0), ("muscle", 0.0)):
        cv.fill(
            layer,
            *cv.ellipses(TRUNK_BOTTOM, np.inf, 0, s.yc, s.a + grow * s.sat, s.b + grow * s.sat),
        )
        for side in (-1, 1):
            th_a = s.th_a + grow * s.sat
            cv.fill(layer, *cv.ellipses(-np.inf, THIGH_TOP, side * s.th_cx, 5.0, th_a, 1.08 * th_a))
            arm = s.arm_r + grow * s.arm_sat
            cv.fill(layer, *cv.ellipses(-760, 16, side * s.arm_cx, 0.0, arm, 0.95 * arm))
    for side in (-1, 1):  # humerus and forearm as one shaft, fatty marrow inside
        box, r2 = cv.ellipses(-760, 12, side * s.arm_cx, 0.0, 0.28 * s.arm_r, 0.28 * s.arm_r)
        cv.fill("bone", box, r2)
        cv.fill("bone_marrow", box, r2, 0.45)


def _paint_trunk_organs(cv: _Canvas) -> None:
    b, s = cv.body, cv.s
    cv.fill("visceral_fat", *cv.ellipses(PELVIC_FLOOR, CAVITY_TOP, 0, s.cav_cy, s.cav_a, s.cav_b))
    inner_a, inner_b = np.maximum(s.cav_a - 0.6 * b.vat, 8), np.maximum(s.cav_b - b.vat, 8)
    cv.fill(
        "viscera",
        *cv.ellipses(PELVIC_FLOOR, VISCERA_TOP, 0, s.cav_cy - 0.1 * b.vat, inner_a, inner_b),
    )
    cv.fill("liver", *cv.ellipsoid(b.liver_c, b.liver_r))
    for centre, radii in b.kidneys:
        cv.fill("kidney", *cv.ellipsoid(centre, radii))
    cv.fill("bladder", *cv.ellipsoid(b.bladder_c, b.bladder_r))
    taper = interp(cv.zr, LUNG_TAPER)
    for side in (-1, 1):  # lungs after the liver: the diaphragm dome shapes the liver top
        box, r2 = cv.ellipses(
            LUNG_DOME[side] - DOME_DEPTH, LUNG_TOP, side * 0.5 * s.cav_a, s.cav_cy + 0.04 * s.cav_b,
            0.46 * s.cav_a * taper, 0.88 * s.cav_b * taper,
        )  # fmt: skip
        if box is not None:
            above_dome = cv.col(cv.zr, box) > LUNG_DOME[side] - DOME_DEPTH * r2
            cv.paint("lung", box, (r2 <= 1) & above_dome)
    cv.fill(
        "airway",
        *cv.ellipses(CARINA, np.inf, 0, s.vy - s.vb_ry - 14 * b.size, 8 * b.size, 8 * b.size),
    )
    # Heart and aorta: fixed compartments; age sets the blood pool / lumen inside.
    box, r2 = cv.ellipsoid(b.heart_c, b.heart_r)
    if box is not None:
        _, pool = cv.ellipsoid(b.heart_c, np.maximum(b.heart_r - b.heart_wall_mm(), 1.0), box=box)
        cv.fill("heart", box, r2, core_r2=pool)
    box, dist = cv.tube(b.aorta_path, b.aorta_r)
    cv.fill("aorta", box, dist, b.aorta_r, core_r2=dist, core_limit=b.aorta_lumen_mm())
    r = interp(cv.zr, PSOAS_R) * b.size
    for side in (-1, 1):
        cv.fill(
            "muscle", *cv.ellipses(PELVIC_FLOOR, -300, side * (s.vb_rx + r + 4), s.vy - 2, r, r)
        )


def _paint_skeleton(cv: _Canvas) -> None:
    b, s = cv.body, cv.s
    taper = interp(cv.zr, ILIUM_TAPER)
    long_r, short_r = 45 * b.size * taper + 1, 9 * b.size
    for side in (-1, 1):  # iliac wings: tilted plates opening laterally and anteriorly
        cx, cy = side * 0.6 * s.a, s.vy - 10
        box, _ = cv.ellipses(-575, -440, cx, cy, long_r, long_r)
        if box is None:
            continue
        X, Y, _ = cv.sub(box)
        ex, ey = side * np.sin(np.radians(40)), -np.cos(np.radians(40))
        dx, dy = X - cv.col(cx, box), Y - cv.col(cy, box)
        along, across = dx * ex + dy * ey, -dx * ey + dy * ex
        lr = cv.col(long_r, box)
        cv.fill("bone", box, (along / lr) ** 2 + (across / short_r) ** 2)
        cv.fill("bone_marrow", box, (along / (lr - 3)) ** 2 + (across / (short_r - 3)) ** 2)
    for f in b.femurs:
        for centre, radii in ((f.head, np.full(3, 24 * b.size)), f.condyle, f.plateau):
            box, r2 = cv.ellipsoid(centre, radii)
            cv.fill("bone", box, r2)
            cv.fill("bone_marrow", box, r2, 0.7)
        for path, r in ((f.neck, 15 * b.size), (f.tibia, 16 * b.size)):
            box, dist = cv.tube(path, r)
            cv.fill("bone", box, dist, r)
            cv.fill("bone_marrow", box, dist, r - 4)
    # Back muscles: fixed fascia; the muscle core shrinks with age and fat fills the rest.
    for side in (-1, 1):
        box, r2 = cv.ellipses(-610, 5, side * s.bm_x, s.bm_y, s.bm_rx, s.bm_ry)
        cv.fill("back_muscle", box, r2, core_r2=r2, core_limit=b.back_muscle_area())
    # Vertebral bodies, each level ending in a disc compartment; the disc fills its centre.
    box, r2 = cv.ellipses(SPINE_BOTTOM, np.inf, 0, s.vy, s.vb_rx, s.vb_ry)
    if box is not None:
        level = cv.col(s.level, box)
        phase = level - np.floor(level)
        compartment = (level < LAST_DISC_LEVEL) & (phase >= 1 - DISC_COMPARTMENT)
        disc = (
            np.abs(phase - (1 - DISC_COMPARTMENT / 2))
            <= DISC_COMPARTMENT * b.disc_height_fraction() / 2
        )
        cv.fill("vertebra", box, r2)
        cv.paint("intervertebral_disc", box, (r2 <= 1) & compartment, core=disc)
    canal_r = 6 * b.size
    canal_y = s.vy + s.vb_ry + canal_r + 1
    cv.fill("spinal_canal", *cv.ellipses(SPINE_BOTTOM + 60, np.inf, 0, canal_y, canal_r, canal_r))


def paint(body: Body, x, y, z) -> _Canvas:
    cv = _Canvas(body, x, y, z)
    _paint_envelope(cv)
    _paint_trunk_organs(cv)
    _paint_skeleton(cv)
    return cv


def _signal_tables(body: Body) -> tuple[np.ndarray, np.ndarray]:
    size = max(REGION_LABELS) + 1
    signal, ff = np.zeros(size, np.float32), np.zeros(size, np.float32)
    tissue = dict(
        _TISSUE, muscle=(0.78, body.muscle_fat_fraction()), liver=(0.70, body.liver_fat_fraction())
    )
    for name, (s, f) in tissue.items():
        signal[_L[name]], ff[_L[name]] = s, f
    return signal, ff


def _age_parts(body: Body) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """(core, shell) tissue (signal, fat fraction) inside each age compartment."""
    return {
        "heart": (_BLOOD, _MYOCARDIUM),
        "aorta": (_BLOOD, _FAT_PAD),
        "back_muscle": ((0.78, body.back_muscle_fat_fraction()), _FAT_PAD),
        "intervertebral_disc": ((body.disc_water(), 0.02), _TISSUE["vertebra"]),
    }


def water_fat(cv: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free water and fat signal (unit = INTENSITY) of a painted canvas."""
    signal_lut, ff_lut = _signal_tables(cv.body)
    signal, ff = signal_lut[cv.labels], ff_lut[cv.labels]
    for name, (core, shell) in _age_parts(cv.body).items():
        m = cv.labels == _L[name]
        inside = cv.core[m]
        signal[m] = np.where(inside, core[0], shell[0])
        ff[m] = np.where(inside, core[1], shell[1])
    return signal * (1 - ff), signal * ff


def _on_grid(participant: SyntheticParticipant, x, y, z, evaluate) -> tuple[np.ndarray, ...]:
    """Evaluate on an axis-aligned grid given by monotonic (either direction) LPS axes."""
    axes, flipped = [], []
    for v in (x, y, z):
        v = np.atleast_1d(np.asarray(v, float))
        flip = v.size > 1 and bool(np.all(np.diff(v) < 0))
        axes.append(v[::-1] if flip else v)
        flipped.append(flip)
    results = evaluate(paint(Body(participant), *axes))
    flip_axes = tuple(i for i, f in enumerate(flipped) if f)
    return tuple(np.ascontiguousarray(np.flip(r, flip_axes)) if flip_axes else r for r in results)


def region_labels(participant: SyntheticParticipant, x, y, z) -> np.ndarray:
    """``REGION_LABELS`` values (uint8, shape (x, y, z)) at the LPS voxel centres
    ``x``, ``y``, ``z`` (mm).

    Each axis is a strictly monotonic 1D array; the grid is their outer product.
    """
    return _on_grid(participant, x, y, z, lambda cv: (cv.labels,))[0]


def tissue_signal(participant: SyntheticParticipant, x, y, z) -> tuple[np.ndarray, np.ndarray]:
    """Noise- and artefact-free (water, fat) signal, unit = full tissue signal, on a grid as
    above."""
    return _on_grid(participant, x, y, z, water_fat)


__all__ = [
    "AGE_REGIONS",
    "REGION_LABELS",
    "region_labels",
    "tissue_signal",
]
