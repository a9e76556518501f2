"""Phantom anatomy: the planted age effects and each participant's body shape and organs.

Height is larger for men, shoulders broader, hips relatively broader for women; BMI widens the
lean body and thickens subcutaneous fat (more so in women) and visceral fat (more so in men).
Each eid adds a small fixed jitter to height, girth and organ size; where the body lies in the
scanner is the participant's ``table_offset_mm`` (applied by ``phantom.paint``). Biological age
(``age + age_offset``) changes what fills four compartments (``phantom.AGE_REGIONS``), nothing
else:

- intervertebral discs: the disc occupies a shrinking share of its compartment (vertebral
  endplate fills the rest) and its water signal falls;
- back muscles: the muscle core shrinks inside its fascia (fat fills the rest) and its fat
  fraction rises;
- heart: the myocardial wall thickens inwards, the blood pool shrinks;
- aorta: the lumen widens inside a compartment of periaortic fat.

The effect sizes are the ``*_AT_REF`` / ``*_PER_DECADE`` constants below (linear in biological
age around ``AGE_REFERENCE``).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ageatlas.synthetic.participants import SyntheticParticipant

# --------------------------------------------------------------------------
# Planted age effects (linear in biological age, per decade from the reference,
# clipped to anatomical limits), times the cohort's ``age_effect_scale``: at 3,
# a small model trained for minutes on 2 CPU cores at 17-24 mm voxels learns
# them well enough for its Grad-CAM maps to be checked against where age was
# planted (tests/explain/test_interpretability.py).
# --------------------------------------------------------------------------
AGE_REFERENCE = 60.0
#: Share of the disc compartment height filled by disc tissue (the rest is endplate).
DISC_HEIGHT_FRACTION_AT_REF = 0.72
DISC_HEIGHT_FRACTION_PER_DECADE = -0.12
#: Disc tissue signal (water dominated; falls as discs desiccate).
DISC_WATER_AT_REF = 0.72
DISC_WATER_PER_DECADE = -0.12
#: Share of the back-muscle compartment cross-section that is muscle (the rest is fat).
BACK_MUSCLE_AREA_AT_REF = 0.80
BACK_MUSCLE_AREA_PER_DECADE = -0.08
#: Fat fraction inside the back-muscle core (fatty infiltration).
BACK_MUSCLE_FAT_FRACTION_AT_REF = 0.14
BACK_MUSCLE_FAT_FRACTION_PER_DECADE = 0.05
#: Myocardial wall thickness (mm), grows inwards into the blood pool.
HEART_WALL_MM_AT_REF = 9.0
HEART_WALL_MM_PER_DECADE = 2.0
#: Aortic lumen radius (mm) inside a fixed compartment of periaortic fat.
AORTA_RADIUS_MM_AT_REF = 12.0
AORTA_RADIUS_MM_PER_DECADE = 1.5
AORTA_COMPARTMENT_RADIUS_MM = 18.0


# --------------------------------------------------------------------------
# Anatomy of a reference man (BMI 25), as (reference z, value) knots. Reference
# z is LPS mm for height factor 1; Z_ANCHOR (about the chin) stays fixed when
# height scales, so shorter people show more leg in station 6.
# --------------------------------------------------------------------------
Z_ANCHOR = 110.0
FEMALE_HEIGHT = 0.93
FEMALE_DEPTH = 0.93
LEAN_PER_BMI = 0.01  # lean girth grows 1 % per BMI unit
SAT_MM = {True: (3.0, 1.5), False: (6.0, 2.4)}  # male?: (at BMI 20, per BMI unit)
VAT_MM = {True: (4.0, 3.2), False: (3.0, 1.6)}
BODY_WALL_MM = 14.0
TRUNK_BOTTOM = -625.0  # crotch; two thighs below
THIGH_TOP = -540.0
THIGH_HALF_GAP = 10.0
ARM_GAP = 6.0
CAVITY_TOP, VISCERA_TOP, PELVIC_FLOOR = 25.0, -215.0, -600.0
LUNG_TOP, LUNG_DOME = 30.0, {-1: -205.0, 1: -222.0}  # right (-x) dome higher
DOME_DEPTH = 45.0
CARINA = -40.0
SPINE_BOTTOM = -600.0
DISC_COMPARTMENT = 0.3  # share of a vertebral level
LAST_DISC_LEVEL = 24.0  # L5/S1; sacrum below


def _knots(*pairs: tuple[float, float]) -> np.ndarray:
    return np.array(sorted(pairs), dtype=float)


TRUNK_HALF_WIDTH = _knots(
    (200, 55), (60, 58), (30, 95), (10, 150), (-30, 165), (-200, 160),
    (-330, 150), (-400, 140), (-480, 155), (-560, 165), (-625, 150),
)  # fmt: skip
TRUNK_HALF_DEPTH = _knots(
    (200, 55), (60, 56), (30, 72), (10, 95), (-30, 105), (-200, 110),
    (-330, 104), (-400, 98), (-480, 98), (-560, 100), (-625, 90),
)  # fmt: skip
TRUNK_CENTRE_Y = _knots((200, 18), (60, 15), (10, 0), (-625, 0))
FEMALE_TRUNK_WIDTH = _knots((200, 0.9), (10, 0.86), (-300, 0.88), (-420, 0.96), (-520, 1.04))
SAT_PROFILE = {
    True: _knots(
        (200, 0.4),
        (40, 0.5),
        (0, 0.9),
        (-250, 1.2),
        (-480, 1.2),
        (-600, 0.9),
        (-700, 0.75),
        (-1300, 0.6),
    ),
    False: _knots(
        (200, 0.4),
        (40, 0.5),
        (0, 1.0),
        (-250, 1.1),
        (-450, 1.3),
        (-600, 1.4),
        (-800, 1.3),
        (-1300, 0.9),
    ),
}
VAT_PROFILE = _knots((-180, 0.0), (-280, 1.0), (-480, 1.0), (-600, 0.3))
SPINE_DEPTH = _knots(
    (200, 42), (40, 48), (0, 58), (-150, 56), (-330, 72), (-450, 82), (-520, 62), (-600, 40)
)
VB_RX = _knots((200, 10), (20, 12), (-300, 20), (-440, 25), (-560, 15), (-600, 6))
VB_RY = _knots((200, 8), (20, 10), (-300, 16), (-440, 18), (-560, 10), (-600, 5))
SPINE_LEVEL = _knots((-440, 24.0), (-290, 19.0), (10, 7.0), (110, 2.0), (200, -2.5))
BACK_MUSCLE_RX = _knots((5, 8), (0, 16), (-100, 24), (-330, 30), (-450, 34), (-540, 28), (-610, 12))
BACK_MUSCLE_RY = _knots((5, 7), (0, 14), (-100, 20), (-330, 26), (-450, 30), (-540, 22), (-610, 10))
PSOAS_R = _knots((-300, 6), (-400, 16), (-480, 22), (-560, 24), (-600, 20))
LUNG_TAPER = _knots((30, 0.05), (22, 0.35), (0, 0.75), (-60, 1.0))
THIGH_HALF_WIDTH = _knots(
    (-540, 80), (-625, 84), (-760, 70), (-900, 56),
    (-950, 52), (-1000, 50), (-1060, 46), (-1300, 38)
)  # fmt: skip
THIGH_CENTRE_X = _knots((-540, 80), (-625, 88), (-900, 82), (-1300, 82))
ARM_RADIUS = _knots(
    (16, 5),
    (8, 40),
    (-60, 44),
    (-330, 34),
    (-380, 36),
    (-580, 26),
    (-610, 30),
    (-740, 26),
    (-760, 8),
)
ILIUM_TAPER = _knots((-575, 0.5), (-520, 1.0), (-470, 1.0), (-440, 0.4))


def interp(zr, knots: np.ndarray):
    return np.interp(zr, knots[:, 0], knots[:, 1])


class Body:
    """Sex-, BMI- and eid-specific anatomy; ``sections`` gives per-slice shapes."""

    def __init__(self, p: SyntheticParticipant):
        male = p.sex == 1
        jitter = np.random.default_rng([p.eid, 0xB0D7]).normal(size=3).clip(-2, 2)
        self.male, self.bmi, self.age = male, p.bmi, p.biological_age
        self.age_effect_scale = p.age_effect_scale
        self.table_offset_mm = tuple(float(v) for v in p.table_offset_mm)
        self.height = (1.0 if male else FEMALE_HEIGHT) * (1 + 0.02 * jitter[0])
        self.size = (
            (1.0 if male else 0.95) * (1 + LEAN_PER_BMI * (p.bmi - 25)) * (1 + 0.03 * jitter[1])
        )
        self.organ = (1.0 if male else 0.88) * (1 + 0.03 * jitter[2])
        self.sat = max(2.0, SAT_MM[male][0] + SAT_MM[male][1] * (p.bmi - 20))
        self.vat = max(2.0, VAT_MM[male][0] + VAT_MM[male][1] * (p.bmi - 20))
        self._place_organs()

    def ref_z(self, z):
        return Z_ANCHOR + (np.asarray(z, float) - Z_ANCHOR) / self.height

    def world_z(self, zr):
        return Z_ANCHOR + (np.asarray(zr, float) - Z_ANCHOR) * self.height

    def sections(self, zr) -> SimpleNamespace:
        """Cross-section parameters (LPS mm) at reference heights ``zr``."""
        zr = np.asarray(zr, float)
        s = SimpleNamespace()
        width = 1.0 if self.male else interp(zr, FEMALE_TRUNK_WIDTH)
        bulge = self.vat * interp(zr, VAT_PROFILE)  # visceral fat pushes the belly forwards
        s.a = interp(zr, TRUNK_HALF_WIDTH) * self.size * width
        s.b = (
            interp(zr, TRUNK_HALF_DEPTH) * self.size * (1.0 if self.male else FEMALE_DEPTH)
            + bulge / 2
        )
        s.yc = interp(zr, TRUNK_CENTRE_Y) - bulge / 2
        back = s.yc + s.b  # the back surface does not move with visceral fat
        s.sat = self.sat * interp(zr, SAT_PROFILE[self.male])
        s.vb_rx, s.vb_ry = interp(zr, VB_RX) * self.size, interp(zr, VB_RY) * self.size
        s.vy = back - interp(zr, SPINE_DEPTH) * self.size
        s.level = interp(zr, SPINE_LEVEL)
        s.bm_rx, s.bm_ry = (
            interp(zr, BACK_MUSCLE_RX) * self.size,
            interp(zr, BACK_MUSCLE_RY) * self.size,
        )
        s.bm_x, s.bm_y = s.bm_rx + 7 * self.size, back - 5 * self.size - s.bm_ry
        wall = BODY_WALL_MM * self.size
        front = s.yc - s.b + wall
        s.cav_a, s.cav_cy, s.cav_b = s.a - wall, (front + s.vy) / 2, (s.vy - front) / 2
        s.th_a = interp(zr, THIGH_HALF_WIDTH) * self.size * (1.0 if self.male else 0.95)
        s.th_cx = np.maximum(
            interp(zr, THIGH_CENTRE_X) * self.size, s.th_a + s.sat + THIGH_HALF_GAP
        )
        s.arm_r, s.arm_sat = interp(zr, ARM_RADIUS) * self.size, 0.7 * s.sat
        trunk_outer = np.where(zr > TRUNK_BOTTOM, s.a + s.sat, 0.0)
        thigh_outer = np.where(zr < THIGH_TOP, s.th_cx + s.th_a + s.sat, 0.0)
        # Arms rest against the trunk, then against the thighs.
        s.arm_cx = np.maximum(trunk_outer, thigh_outer) + s.arm_r + s.arm_sat + ARM_GAP
        return s

    def _place_organs(self) -> None:
        """Organ centres and sizes (world LPS mm) from the sections at fixed heights."""
        at = self.sections
        wz, o = self.world_z, self.organ
        h = at(-150)
        self.heart_c = np.array([0.15 * h.cav_a, h.cav_cy - 0.2 * h.cav_b, wz(-150)])
        self.heart_r = np.array([58 * o, 48 * o, 62 * o * self.height])
        lv = at(-285)
        self.liver_c = np.array([-0.38 * lv.cav_a, lv.cav_cy, wz(-285)])
        self.liver_r = np.array([0.62 * lv.cav_a, 0.78 * lv.cav_b, 85 * self.height])
        self.kidneys = []
        for side, zk in ((-1, -350.0), (1, -335.0)):  # the right kidney sits lower
            k = at(zk)
            centre = [side * (k.vb_rx + 40 * self.size), k.vy - 8 * self.size, wz(zk)]
            self.kidneys.append((np.array(centre), np.array([28, 24, 55 * self.height]) * o))
        bl = at(-565)
        self.bladder_c = np.array([0.0, bl.yc - 0.45 * bl.b, wz(-565)])
        self.bladder_r = np.array([42, 32, 32 * self.height]) * o
        self.aorta_r = AORTA_COMPARTMENT_RADIUS_MM * o

        def behind_aorta(zr):  # descending aorta lies left-anterior of the vertebral body
            q = at(zr)
            return q.vy - q.vb_ry - 0.8 * self.aorta_r

        hc = self.heart_c
        self.aorta_path = np.array(
            [
                [hc[0] - 15, hc[1] - 5, wz(-120)],
                [-5, hc[1] - 20, wz(-60)],
                [10, (hc[1] - 20 + behind_aorta(-50)) / 2, wz(-30)],
                [25, behind_aorta(-70), wz(-70)],
                [22, behind_aorta(-250), wz(-250)],
                [12, behind_aorta(-400), wz(-400)],
            ]
        )
        hip = at(-548)
        self.femurs = [self._leg_bones(side, hip) for side in (-1, 1)]

    def _leg_bones(self, side: int, hip: SimpleNamespace) -> SimpleNamespace:
        """Femoral head, neck and shaft, condyles, tibial plateau and shaft, along the thigh
        axis."""
        wz, size, h = self.world_z, self.size, self.height

        def axis(zr, y):
            return [side * self.sections(zr).th_cx, y, wz(zr)]

        head = [side * 0.55 * hip.a, hip.yc - 0.1 * hip.b, wz(-548)]
        return SimpleNamespace(
            head=np.array(head),
            neck=np.array([head, axis(-600, 5), axis(-930, 8)]),
            condyle=(np.array(axis(-962, 8)), np.array([36, 30, 24 * h]) * size),
            tibia=np.array([axis(-1000, 10), axis(-1300, 10)]),
            plateau=(np.array(axis(-1000, 10)), np.array([36, 28, 16 * h]) * size),
        )

    def _aged(self, at_ref: float, per_decade: float, lo: float, hi: float) -> float:
        """A planted age effect: linear in biological age, clipped so extreme offsets stay
        anatomical."""
        change = per_decade * self.age_effect_scale * (self.age - AGE_REFERENCE) / 10.0
        return float(np.clip(at_ref + change, lo, hi))

    def disc_height_fraction(self) -> float:
        return self._aged(DISC_HEIGHT_FRACTION_AT_REF, DISC_HEIGHT_FRACTION_PER_DECADE, 0.15, 1.0)

    def disc_water(self) -> float:
        return self._aged(DISC_WATER_AT_REF, DISC_WATER_PER_DECADE, 0.15, 1.0)

    def back_muscle_area(self) -> float:
        return self._aged(BACK_MUSCLE_AREA_AT_REF, BACK_MUSCLE_AREA_PER_DECADE, 0.3, 1.0)

    def back_muscle_fat_fraction(self) -> float:
        bmi_shift = self.muscle_fat_fraction() - 0.05
        return self._aged(
            BACK_MUSCLE_FAT_FRACTION_AT_REF + bmi_shift,
            BACK_MUSCLE_FAT_FRACTION_PER_DECADE,
            0.02,
            0.6,
        )

    def heart_wall_mm(self) -> float:
        return self._aged(HEART_WALL_MM_AT_REF, HEART_WALL_MM_PER_DECADE, 3.0, 20.0)

    def aorta_lumen_mm(self) -> float:
        r = self._aged(AORTA_RADIUS_MM_AT_REF, AORTA_RADIUS_MM_PER_DECADE, 4.0, 40.0) * self.organ
        return min(r, 0.95 * self.aorta_r)

    # BMI effects on tissue composition
    def muscle_fat_fraction(self) -> float:
        return float(np.clip(0.05 + 0.003 * (self.bmi - 25), 0.02, 0.15))

    def liver_fat_fraction(self) -> float:
        return float(np.clip(0.03 + 0.012 * max(0.0, self.bmi - 25), 0.02, 0.35))
