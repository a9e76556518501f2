"""Synthetic UK Biobank cohort in the real field-20201 format (demo and tests).

UK Biobank images cannot be shipped, so this module writes synthetic
participants in exactly the layout the pipeline meets in real data
(``reference/ukbb-format.md``). Everything it writes is labelled synthetic
(InstitutionName and Manufacturer "ageatlas synthetic").

The zip
-------
``{eid}_20201_2_0.zip`` holds, flat at its root, one DICOM file per 2D slice
named after its SOPInstanceUID (hash-derived, so names say nothing about
series order), in shuffled member order, plus a manifest named
``manifest.csv`` or, for about half the participants, ``manifest.cvs``. The
manifest has the columns ``filename,date,patientid,modality,seriesid,series
discription`` (sic) and an unquoted date such as ``Aug 30, 2015``: every row
has one field more than the header, as in the real files.

Six stations x four Dixon contrasts make 24 series, SeriesNumber 1..24, in the
order in, opp, F, W within a station (``layout.CONTRASTS``), described
``Dixon_noBH_*`` (stations 1, 5, 6) or ``Dixon_BH_17s_*`` (2-4). Matrices and
slice spacings are the real ones (``layout.STATIONS``); columns run along
patient left (+x, LPS), rows along posterior (+y), ImageOrientationPatient is
axial ``[1,0,0,0,1,0]`` and the first pixel sits at ``-FOV/2`` in x and y, as
in the real example ``[-250.00000762939, -187.50000572205, -79.5]``.
InstanceNumber 1 is the most superior slice of a station. Slab positions
(``STATION_TOP_SLICE_Z_MM``) put station 1 highest (+z is superior) and give
each junction 31.5-33.5 mm of slice-centre overlap (36-37.5 mm of slab
overlap); the slabs cover z = -999.5..111 mm (1110.5 mm), so a 370 x 3.0 mm
grid spans them. Pixels are 12-bit values in 16-bit words (0..4095), written
by pydicom with an Explicit VR Little Endian file meta header.

``scale`` keeps every station's field of view and shrinks its matrix: each of
columns, rows and slices becomes ``max(1, round(n * scale))`` and the spacing
grows to match, so extents and slab edges do not move.

The phantom
-----------
A continuous body in world millimetres (LPS), sampled at voxel centres, so the
stations agree where they overlap and the truth label map agrees with the
DICOM geometry. Neck, shoulders, arms beside the trunk, thorax, abdomen,
pelvis and two separate thighs down past the knees; lungs, heart, aorta,
liver, kidneys, bladder, a spine of vertebral bodies and intervertebral discs
with its canal, autochthonous back muscles, psoas, femurs, tibiae, pelvic
bones. Height is larger for men, shoulders broader, hips relatively broader
for women; BMI widens the lean body and thickens subcutaneous fat (more so in
women) and visceral fat (more so in men). Each eid adds a small fixed jitter
to height, girth and organ size.

Labels (``REGION_LABELS``) are anatomical compartments whose geometry depends
on sex, BMI and eid only. Biological age (``age + age_offset``) changes what
fills four of them (``AGE_REGIONS``), nothing else:

- intervertebral discs: the disc occupies a shrinking share of its
  compartment (vertebral endplate fills the rest) and its water signal falls;
- back muscles: the muscle core shrinks inside its fascia (fat fills the rest)
  and its fat fraction rises;
- heart: the myocardial wall thickens inwards, the blood pool shrinks;
- aorta: the lumen widens inside a compartment of periaortic fat.

The effect sizes are the ``*_AT_REF`` / ``*_PER_DECADE`` constants below
(linear in biological age around ``AGE_REFERENCE``). Water and fat images are
tissue signal times (1 - fat fraction) and times fat fraction; in-phase is
W + F, opposed-phase |W - F|. Each station then gets its own gain
(``GAIN_RANGE``), a smooth multiplicative bias field, a bright folding ghost
in its end slices (the body outline of the opposite slab end) and Rician
noise, independently per contrast. All of it is deterministic for
(participant, seed); anatomy depends on the participant alone.

Defects (``write_participant_zip(defects=...)``, combinable)
------------------------------------------------------------
The affected station is drawn deterministically per (participant, seed,
defect); ``defect_station`` returns it.

- ``short_series``: one series of a breath-hold station (2-4) lacks its last
  (most inferior) slice: 43 instead of 44 at full resolution.
- ``repeat_station``: one station acquired twice. The first acquisition keeps
  its SeriesNumbers but is motion-corrupted (phase-encode ghosts) at a lower
  gain; the repeat, at the same position with SeriesNumbers 25..28 and a
  SeriesTime after all others, is identical to the clean acquisition.
- ``fat_water_swap``: the F and W pixel data of one station are exchanged
  (descriptions unchanged).
- ``missing_station``: all series of one station are absent.
- ``missing_water``: the W series of one station is absent.
- ``bad_orientation``: one station's four series carry a coronal
  ImageOrientationPatient ``[1,0,0,0,0,-1]``, inconsistent with the others.
- ``non_dicom_member``: an extra text member with a UID-like ``.dcm`` name.
- ``path_traversal_member``: an extra member named ``../evil.dcm``.
- ``no_manifest``: no manifest member.
- ``garbled_manifest``: the manifest holds random bytes.
- ``manifest_cvs``: the manifest is named ``manifest.cvs`` whatever the draw.
- ``truncated_zip``: the zip file is cut to half its bytes.
- ``empty_zip``: a valid zip archive with no members.
- ``zero_bytes``: a 0-byte file (takes precedence over every other defect;
  ``empty_zip`` takes precedence over the member defects).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ageatlas import layout

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# Planted age effects (linear in biological age, per decade from the reference,
# clipped to anatomical limits), times the cohort's ``age_effect_scale``: at 3,
# a small model trained for minutes on 2 CPU cores at 17-24 mm voxels learns
# them well enough for its Grad-CAM maps to be checked against where age was
# planted (tests/test_interpretability.py).
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
# Acquisition
# --------------------------------------------------------------------------
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
_L = {name: value for value, name in REGION_LABELS.items()}

_STATION_DEFECTS = {
    "short_series": (2, 3, 4),
    "repeat_station": (1, 2, 3, 4, 5, 6),
    "fat_water_swap": (1, 2, 3, 4, 5, 6),
    "missing_station": (1, 2, 3, 4, 5, 6),
    "missing_water": (1, 2, 3, 4, 5, 6),
    "bad_orientation": (1, 2, 3, 4, 5, 6),
}
#: Every defect name ``write_participant_zip`` accepts (see the module docstring).
DEFECTS: tuple[str, ...] = (
    *_STATION_DEFECTS,
    "non_dicom_member",
    "path_traversal_member",
    "no_manifest",
    "garbled_manifest",
    "manifest_cvs",
    "truncated_zip",
    "empty_zip",
    "zero_bytes",
)

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
        (200, 0.4), (40, 0.5), (0, 0.9), (-250, 1.2), (-480, 1.2), (-600, 0.9), (-700, 0.75), (-1300, 0.6)
    ),
    False: _knots(
        (200, 0.4), (40, 0.5), (0, 1.0), (-250, 1.1), (-450, 1.3), (-600, 1.4), (-800, 1.3), (-1300, 0.9)
    ),
}
VAT_PROFILE = _knots((-180, 0.0), (-280, 1.0), (-480, 1.0), (-600, 0.3))
SPINE_DEPTH = _knots((200, 42), (40, 48), (0, 58), (-150, 56), (-330, 72), (-450, 82), (-520, 62), (-600, 40))
VB_RX = _knots((200, 10), (20, 12), (-300, 20), (-440, 25), (-560, 15), (-600, 6))
VB_RY = _knots((200, 8), (20, 10), (-300, 16), (-440, 18), (-560, 10), (-600, 5))
SPINE_LEVEL = _knots((-440, 24.0), (-290, 19.0), (10, 7.0), (110, 2.0), (200, -2.5))
BACK_MUSCLE_RX = _knots((5, 8), (0, 16), (-100, 24), (-330, 30), (-450, 34), (-540, 28), (-610, 12))
BACK_MUSCLE_RY = _knots((5, 7), (0, 14), (-100, 20), (-330, 26), (-450, 30), (-540, 22), (-610, 10))
PSOAS_R = _knots((-300, 6), (-400, 16), (-480, 22), (-560, 24), (-600, 20))
LUNG_TAPER = _knots((30, 0.05), (22, 0.35), (0, 0.75), (-60, 1.0))
THIGH_HALF_WIDTH = _knots(
    (-540, 80), (-625, 84), (-760, 70), (-900, 56), (-950, 52), (-1000, 50), (-1060, 46), (-1300, 38)
)  # fmt: skip
THIGH_CENTRE_X = _knots((-540, 80), (-625, 88), (-900, 82), (-1300, 82))
ARM_RADIUS = _knots(
    (16, 5), (8, 40), (-60, 44), (-330, 34), (-380, 36), (-580, 26), (-610, 30), (-740, 26), (-760, 8)
)
ILIUM_TAPER = _knots((-575, 0.5), (-520, 1.0), (-470, 1.0), (-440, 0.4))

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


# --------------------------------------------------------------------------
# Participants and phenotypes
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticParticipant:
    """One synthetic participant; ``sex`` uses UK Biobank coding (0 female, 1 male)."""

    eid: int
    sex: int
    age: float  # chronological age at the imaging visit, years
    bmi: float
    age_offset: float = 0.0  # biological minus chronological age, years
    age_effect_scale: float = 1.0  # multiplies every planted per-decade age effect

    @property
    def biological_age(self) -> float:
        return self.age + self.age_offset


#: BMI ranges drawn for the healthy, overweight and obese groups.
BMI_GROUP_RANGES = ((18.5, 25.0), (25.0, 30.0), (30.0, 38.0))


def make_cohort(
    n: int,
    seed: int,
    age_range: tuple[float, float] = (46.0, 81.0),
    offset_sd: float = 4.0,
    first_eid: int = 1000001,
    age_effect_scale: float = 1.0,
) -> list[SyntheticParticipant]:
    """A deterministic synthetic cohort of ``n`` participants.

    Sexes alternate before shuffling (balanced to one); within each sex the
    three BMI groups take turns (balanced to one); ages are stratified so they
    spread uniformly over ``age_range``; age offsets are normal (s.d.
    ``offset_sd``, clipped at 3 s.d.). Values are rounded to 0.01 and the
    phantom uses the rounded values.
    """
    if n < 1:
        raise ValueError(f"cohort size must be positive, got {n}")
    if not 1_000_000 <= first_eid <= 9_999_999 - (n - 1):
        raise ValueError("eids must stay 7-digit like UK Biobank's")
    rng = np.random.default_rng([seed, 0x5EED])
    sexes = rng.permutation(np.arange(n) % 2)
    bmis = np.empty(n)
    for sex in (0, 1):
        idx = np.flatnonzero(sexes == sex)
        lo, hi = np.array(BMI_GROUP_RANGES)[rng.permutation(np.arange(idx.size) % 3)].T
        bmis[idx] = np.floor(rng.uniform(lo, hi) * 100) / 100  # floor keeps each group's upper bound open
    lo, hi = age_range
    ages = lo + (rng.permutation(n) + rng.uniform(size=n)) / n * (hi - lo)
    offsets = np.clip(rng.normal(0.0, offset_sd, n), -3 * offset_sd, 3 * offset_sd)
    return [
        SyntheticParticipant(
            eid=first_eid + i,
            sex=int(sexes[i]),
            age=round(float(ages[i]), 2),
            bmi=float(bmis[i]),
            age_offset=round(float(offsets[i]), 2),
            age_effect_scale=float(age_effect_scale),
        )
        for i in range(n)
    ]


def phenotype_table(participants: Sequence[SyntheticParticipant]) -> pd.DataFrame:
    """Phenotypes under UK Biobank export column names (sex, age and BMI at visit 2)."""
    return pd.DataFrame(
        {
            "eid": [p.eid for p in participants],
            "31-0.0": [p.sex for p in participants],
            "21003-2.0": [float(p.age) for p in participants],
            "21001-2.0": [float(p.bmi) for p in participants],
        }
    )


# --------------------------------------------------------------------------
# Phantom anatomy
# --------------------------------------------------------------------------
def _interp(zr, knots: np.ndarray):
    return np.interp(zr, knots[:, 0], knots[:, 1])


class _Body:
    """Sex-, BMI- and eid-specific anatomy; ``sections`` gives per-slice shapes."""

    def __init__(self, p: SyntheticParticipant):
        male = p.sex == 1
        jitter = np.random.default_rng([p.eid, 0xB0D7]).normal(size=3).clip(-2, 2)
        self.male, self.bmi, self.age = male, p.bmi, p.biological_age
        self.age_effect_scale = p.age_effect_scale
        self.height = (1.0 if male else FEMALE_HEIGHT) * (1 + 0.02 * jitter[0])
        self.size = (1.0 if male else 0.95) * (1 + LEAN_PER_BMI * (p.bmi - 25)) * (1 + 0.03 * jitter[1])
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
        width = 1.0 if self.male else _interp(zr, FEMALE_TRUNK_WIDTH)
        bulge = self.vat * _interp(zr, VAT_PROFILE)  # visceral fat pushes the belly forwards
        s.a = _interp(zr, TRUNK_HALF_WIDTH) * self.size * width
        s.b = _interp(zr, TRUNK_HALF_DEPTH) * self.size * (1.0 if self.male else FEMALE_DEPTH) + bulge / 2
        s.yc = _interp(zr, TRUNK_CENTRE_Y) - bulge / 2
        back = s.yc + s.b  # the back surface does not move with visceral fat
        s.sat = self.sat * _interp(zr, SAT_PROFILE[self.male])
        s.vb_rx, s.vb_ry = _interp(zr, VB_RX) * self.size, _interp(zr, VB_RY) * self.size
        s.vy = back - _interp(zr, SPINE_DEPTH) * self.size
        s.level = _interp(zr, SPINE_LEVEL)
        s.bm_rx, s.bm_ry = _interp(zr, BACK_MUSCLE_RX) * self.size, _interp(zr, BACK_MUSCLE_RY) * self.size
        s.bm_x, s.bm_y = s.bm_rx + 7 * self.size, back - 5 * self.size - s.bm_ry
        wall = BODY_WALL_MM * self.size
        front = s.yc - s.b + wall
        s.cav_a, s.cav_cy, s.cav_b = s.a - wall, (front + s.vy) / 2, (s.vy - front) / 2
        s.th_a = _interp(zr, THIGH_HALF_WIDTH) * self.size * (1.0 if self.male else 0.95)
        s.th_cx = np.maximum(_interp(zr, THIGH_CENTRE_X) * self.size, s.th_a + s.sat + THIGH_HALF_GAP)
        s.arm_r, s.arm_sat = _interp(zr, ARM_RADIUS) * self.size, 0.7 * s.sat
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
        """Femoral head, neck and shaft, condyles, tibial plateau and shaft, along the thigh axis."""
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
        """A planted age effect: linear in biological age, clipped so extreme offsets stay anatomical."""
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
            BACK_MUSCLE_FAT_FRACTION_AT_REF + bmi_shift, BACK_MUSCLE_FAT_FRACTION_PER_DECADE, 0.02, 0.6
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


class _Canvas:
    """Label and age-core volumes on an axis-aligned LPS grid, painted in anatomical order."""

    def __init__(self, body: _Body, x, y, z):
        x, y, z = (np.asarray(v, float) for v in (x, y, z))
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
        cx, cy, a, b = (np.broadcast_to(np.asarray(v, float), self.z.shape)[ks] for v in (cx, cy, a, b))
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
        cv.fill(layer, *cv.ellipses(TRUNK_BOTTOM, np.inf, 0, s.yc, s.a + grow * s.sat, s.b + grow * s.sat))
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
    cv.fill("viscera", *cv.ellipses(PELVIC_FLOOR, VISCERA_TOP, 0, s.cav_cy - 0.1 * b.vat, inner_a, inner_b))
    cv.fill("liver", *cv.ellipsoid(b.liver_c, b.liver_r))
    for centre, radii in b.kidneys:
        cv.fill("kidney", *cv.ellipsoid(centre, radii))
    cv.fill("bladder", *cv.ellipsoid(b.bladder_c, b.bladder_r))
    taper = _interp(cv.zr, LUNG_TAPER)
    for side in (-1, 1):  # lungs after the liver: the diaphragm dome shapes the liver top
        box, r2 = cv.ellipses(
            LUNG_DOME[side] - DOME_DEPTH, LUNG_TOP, side * 0.5 * s.cav_a, s.cav_cy + 0.04 * s.cav_b,
            0.46 * s.cav_a * taper, 0.88 * s.cav_b * taper,
        )  # fmt: skip
        if box is not None:
            above_dome = cv.col(cv.zr, box) > LUNG_DOME[side] - DOME_DEPTH * r2
            cv.paint("lung", box, (r2 <= 1) & above_dome)
    cv.fill("airway", *cv.ellipses(CARINA, np.inf, 0, s.vy - s.vb_ry - 14 * b.size, 8 * b.size, 8 * b.size))
    # Heart and aorta: fixed compartments; age sets the blood pool / lumen inside.
    box, r2 = cv.ellipsoid(b.heart_c, b.heart_r)
    if box is not None:
        _, pool = cv.ellipsoid(b.heart_c, np.maximum(b.heart_r - b.heart_wall_mm(), 1.0), box=box)
        cv.fill("heart", box, r2, core_r2=pool)
    box, dist = cv.tube(b.aorta_path, b.aorta_r)
    cv.fill("aorta", box, dist, b.aorta_r, core_r2=dist, core_limit=b.aorta_lumen_mm())
    r = _interp(cv.zr, PSOAS_R) * b.size
    for side in (-1, 1):
        cv.fill("muscle", *cv.ellipses(PELVIC_FLOOR, -300, side * (s.vb_rx + r + 4), s.vy - 2, r, r))


def _paint_skeleton(cv: _Canvas) -> None:
    b, s = cv.body, cv.s
    taper = _interp(cv.zr, ILIUM_TAPER)
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
        disc = np.abs(phase - (1 - DISC_COMPARTMENT / 2)) <= DISC_COMPARTMENT * b.disc_height_fraction() / 2
        cv.fill("vertebra", box, r2)
        cv.paint("intervertebral_disc", box, (r2 <= 1) & compartment, core=disc)
    canal_r = 6 * b.size
    canal_y = s.vy + s.vb_ry + canal_r + 1
    cv.fill("spinal_canal", *cv.ellipses(SPINE_BOTTOM + 60, np.inf, 0, canal_y, canal_r, canal_r))


def _paint(body: _Body, x, y, z) -> _Canvas:
    cv = _Canvas(body, x, y, z)
    _paint_envelope(cv)
    _paint_trunk_organs(cv)
    _paint_skeleton(cv)
    return cv


def _signal_tables(body: _Body) -> tuple[np.ndarray, np.ndarray]:
    size = max(REGION_LABELS) + 1
    signal, ff = np.zeros(size, np.float32), np.zeros(size, np.float32)
    tissue = dict(_TISSUE, muscle=(0.78, body.muscle_fat_fraction()), liver=(0.70, body.liver_fat_fraction()))
    for name, (s, f) in tissue.items():
        signal[_L[name]], ff[_L[name]] = s, f
    return signal, ff


def _age_parts(body: _Body) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """(core, shell) tissue (signal, fat fraction) inside each age compartment."""
    return {
        "heart": (_BLOOD, _MYOCARDIUM),
        "aorta": (_BLOOD, _FAT_PAD),
        "back_muscle": ((0.78, body.back_muscle_fat_fraction()), _FAT_PAD),
        "intervertebral_disc": ((body.disc_water(), 0.02), _TISSUE["vertebra"]),
    }


def _water_fat(cv: _Canvas) -> tuple[np.ndarray, np.ndarray]:
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
    results = evaluate(_paint(_Body(participant), *axes))
    flip_axes = tuple(i for i, f in enumerate(flipped) if f)
    return tuple(np.ascontiguousarray(np.flip(r, flip_axes)) if flip_axes else r for r in results)


def region_labels(participant: SyntheticParticipant, x, y, z) -> np.ndarray:
    """``REGION_LABELS`` values (uint8, shape (x, y, z)) at the LPS voxel centres ``x``, ``y``, ``z`` (mm).

    Each axis is a strictly monotonic 1D array; the grid is their outer product.
    """
    return _on_grid(participant, x, y, z, lambda cv: (cv.labels,))[0]


def tissue_signal(participant: SyntheticParticipant, x, y, z) -> tuple[np.ndarray, np.ndarray]:
    """Noise- and artefact-free (water, fat) signal, unit = full tissue signal, on a grid as above."""
    return _on_grid(participant, x, y, z, _water_fat)


# --------------------------------------------------------------------------
# Station grids and image formation
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Grid:
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


def _station_grids(scale: float) -> tuple[_Grid, ...]:
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    grids = []
    for spec, top in zip(layout.STATIONS, STATION_TOP_SLICE_Z_MM):
        n = [max(1, round(v * scale)) for v in (spec.columns, spec.rows, spec.slices)]
        fov = (spec.columns * layout.PIXEL_SPACING_MM, spec.rows * layout.PIXEL_SPACING_MM,
               spec.slices * spec.slice_spacing_mm)  # fmt: skip
        dx, dy, dz = (f / k for f, k in zip(fov, n))
        slab_top = top + spec.slice_spacing_mm / 2
        grids.append(_Grid(spec, *n, dx, dy, dz, slab_top - dz / 2))
    return tuple(grids)


def _truth_grid(spacing_mm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Regular LPS grid covering every station's field of view (z ascending)."""
    full = _station_grids(1.0)
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


def _bias_field(grid: _Grid, rng: np.random.Generator) -> np.ndarray:
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


def _station_water_fat(body: _Body, grid: _Grid, rng: np.random.Generator, n_fold: int):
    cv = _paint(body, grid.x, grid.y, grid.z)
    water, fat = _water_fat(cv)
    gain = rng.uniform(*GAIN_RANGE)
    field = _bias_field(grid, rng) * np.float32(gain * INTENSITY)
    ghost = _fold_ghost(cv.labels != 0, n_fold) * np.float32(FOLD_GHOST * INTENSITY * gain / 2)
    return water * field + ghost, fat * field + ghost


def _contrasts(water, fat, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The four Dixon contrasts, each with its own Rician noise, as 12-bit integers."""
    sources = {"in": water + fat, "opp": np.abs(water - fat), "F": fat, "W": water}
    sd = np.float32(NOISE_SD * INTENSITY)
    out = {}
    for name in layout.CONTRASTS:
        s = sources[name]
        real = s + sd * rng.standard_normal(s.shape, np.float32)
        imag = sd * rng.standard_normal(s.shape, np.float32)
        out[name] = np.clip(np.rint(np.sqrt(real * real + imag * imag)), 0, MAX_STORED).astype(np.uint16)
    return out


def _motion_corrupt(image: np.ndarray, rows: int) -> np.ndarray:
    """Phase-encode (row) ghosts and a gain drop: a visibly worse first acquisition."""
    shift = max(1, rows // 6)
    return 0.7 * (0.65 * image + 0.35 * np.roll(image, shift, axis=1))


# --------------------------------------------------------------------------
# Series, defects and DICOM
# --------------------------------------------------------------------------
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ECHO_TIME_MS = {"in": 4.77, "opp": 2.39, "F": 4.77, "W": 4.77}  # UKBB 1.5 T Dixon echoes


@dataclass
class _Series:
    grid: _Grid
    contrast: str
    number: int
    time_s: float  # seconds after midnight
    pixels: np.ndarray  # uint16 (columns, rows, slices)
    orientation: tuple[float, ...] = AXIAL

    @property
    def description(self) -> str:
        return layout.series_description(self.grid.spec, self.contrast)


@dataclass
class _Session:
    participant: SyntheticParticipant
    seed: int
    date: dt.date = field(init=False)
    start_s: float = field(init=False)

    def __post_init__(self):
        rng = np.random.default_rng([self.seed, self.participant.eid, 4])
        self.date = dt.date(2014, 5, 1) + dt.timedelta(days=int(rng.integers(0, 6 * 365)))
        self.start_s = float(rng.uniform(8 * 3600, 18 * 3600))

    def uid(self, *parts) -> str:
        # pydicom hashes the concatenated sources: join with a separator so ("sop", 1, 23) != ("sop", 12, 3)
        key = "|".join(map(str, ("ageatlas synthetic", self.seed, self.participant.eid, *parts)))
        return generate_uid(entropy_srcs=[key])


def _check_defects(defects: Sequence[str]) -> frozenset[str]:
    if isinstance(defects, str):
        defects = (defects,)
    unknown = set(defects) - set(DEFECTS)
    if unknown:
        raise ValueError(f"unknown defect(s) {sorted(unknown)}; known: {', '.join(DEFECTS)}")
    return frozenset(defects)


def _seed(seed: int | None) -> int:
    return 0 if seed is None else int(seed)


def defect_station(participant: SyntheticParticipant, defect: str, seed: int | None = None) -> int | None:
    """Station (1..6) a station-level defect hits for this participant and seed; None for others."""
    _check_defects((defect,))
    if defect not in _STATION_DEFECTS:
        return None
    rng = np.random.default_rng([_seed(seed), participant.eid, 2, DEFECTS.index(defect)])
    return int(rng.choice(_STATION_DEFECTS[defect]))


def _short_series_contrast(participant: SyntheticParticipant, seed: int) -> str:
    rng = np.random.default_rng([seed, participant.eid, 2, DEFECTS.index("short_series"), 1])
    return str(rng.choice(layout.CONTRASTS))


def _acquire(p: SyntheticParticipant, scale: float, seed: int, defects: frozenset[str], session: _Session):
    body = _Body(p)
    n_fold = max(1, round(FOLD_SLICES * scale))
    repeat = defect_station(p, "repeat_station", seed) if "repeat_station" in defects else None
    series: list[_Series] = []
    for g in _station_grids(scale):
        k = g.spec.index
        rng = np.random.default_rng([seed, p.eid, 1, k])
        water, fat = _station_water_fat(body, g, rng, n_fold)
        images = _contrasts(water, fat, rng)
        t0 = session.start_s + (k - 1) * STATION_INTERVAL_S
        if k == repeat:  # first acquisition corrupted; the clean repeat comes last
            bad_rng = np.random.default_rng([seed, p.eid, 1, k, 1])
            bad = _contrasts(_motion_corrupt(water, g.rows), _motion_corrupt(fat, g.rows), bad_rng)
            t_repeat = session.start_s + 6 * STATION_INTERVAL_S + 40.0
            for c, contrast in enumerate(layout.CONTRASTS):
                series.append(_Series(g, contrast, 25 + c, t_repeat + c, images[contrast]))
            images = bad
        for c, contrast in enumerate(layout.CONTRASTS):
            series.append(_Series(g, contrast, 4 * (k - 1) + c + 1, t0 + c, images[contrast]))
    return _apply_series_defects(series, p, seed, defects)


def _apply_series_defects(series: list[_Series], p, seed: int, defects: frozenset[str]) -> list[_Series]:
    hit = {d: defect_station(p, d, seed) for d in defects if d in _STATION_DEFECTS}
    if "fat_water_swap" in hit:
        at = [s for s in series if s.grid.spec.index == hit["fat_water_swap"]]
        fat = {s.number: s for s in at if s.contrast == "F"}
        water = {s.number: s for s in at if s.contrast == "W"}
        for f_num, f in fat.items():
            w = water[f_num + 1]  # W follows F in SeriesNumber
            f.pixels, w.pixels = w.pixels, f.pixels
    if "short_series" in hit:
        contrast = _short_series_contrast(p, seed)
        for s in series:
            if s.grid.spec.index == hit["short_series"] and s.contrast == contrast and s.number <= 24:
                s.pixels = s.pixels[:, :, :-1]
    if "bad_orientation" in hit:
        for s in series:
            if s.grid.spec.index == hit["bad_orientation"]:
                s.orientation = CORONAL
    if "missing_water" in hit:
        series = [s for s in series if not (s.grid.spec.index == hit["missing_water"] and s.contrast == "W")]
    if "missing_station" in hit:
        series = [s for s in series if s.grid.spec.index != hit["missing_station"]]
    return series


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    for digits in range(14, 4, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(value)


def _tm(seconds: float) -> str:
    """DICOM TM (HHMMSS.ffffff); rounded to whole microseconds first so 59.9999996 s never prints as 60."""
    us = round(seconds * 1e6) % (86400 * 10**6)
    h, rem = divmod(us, 3600 * 10**6)
    m, rem = divmod(rem, 60 * 10**6)
    return f"{h:02d}{m:02d}{rem // 10**6:02d}.{rem % 10**6:06d}"


def _series_dataset(s: _Series, session: _Session) -> Dataset:
    p, g = session.participant, s.grid
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "DIS2D"]
    ds.SOPClassUID = MRImageStorage
    date = session.date.strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = _tm(session.start_s)
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _tm(s.time_s)
    ds.Modality = "MR"
    ds.Manufacturer = ds.InstitutionName = "ageatlas synthetic"
    ds.ManufacturerModelName = "synthetic phantom"
    ds.StudyDescription = "ageatlas synthetic neck-to-knee Dixon"
    ds.SeriesDescription = s.description
    ds.PatientName = f"synthetic^{p.eid}"
    ds.PatientID = str(p.eid)
    ds.PatientSex = "M" if p.sex == 1 else "F"
    ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "GR", "SP", "3D"
    ds.SliceThickness = ds.SpacingBetweenSlices = _ds(g.dz)
    ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = "6.69", _ds(_ECHO_TIME_MS[s.contrast]), "10"
    ds.MagneticFieldStrength = "1.5"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = session.uid("study")
    ds.SeriesInstanceUID = session.uid("series", s.number)
    ds.StudyID = "1"
    ds.SeriesNumber = s.number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [_ds(v) for v in s.orientation]
    ds.FrameOfReferenceUID = session.uid("frame of reference")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = g.rows, g.columns
    ds.PixelSpacing = [_ds(g.dy), _ds(g.dx)]  # row spacing, column spacing
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if int(pydicom.__version__.split(".")[0]) < 3:  # pydicom 2 needs the encoding spelled out
        ds.is_little_endian, ds.is_implicit_VR = True, False
    return ds


def _dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    try:
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    except TypeError:  # pydicom < 3
        pydicom.dcmwrite(buf, ds, write_like_original=False)
    return buf.getvalue()


def _render(series: list[_Series], session: _Session) -> tuple[list[tuple[str, bytes]], list[str]]:
    """DICOM members (name, bytes) and manifest rows, one per slice."""
    members, rows = [], []
    d = session.date
    date = f"{_MONTHS[d.month - 1]} {d.day}, {d.year}"  # "Aug 30, 2015", unquoted as in the real files
    for s in series:
        ds = _series_dataset(s, session)
        x0, y0 = s.grid.x[0], s.grid.y[0]
        for k in range(s.pixels.shape[2]):
            uid = session.uid("sop", s.number, k)
            z = s.grid.z[k]
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
            ds.SliceLocation = _ds(z)
            ds.PixelData = np.ascontiguousarray(s.pixels[:, :, k].T).tobytes()
            name = f"{uid}.dcm"
            members.append((name, _dicom_bytes(ds)))
            rows.append(f"{name},{date},{session.participant.eid},MR,{ds.SeriesInstanceUID},{s.description}")
    return members, rows


def _manifest_name(p: SyntheticParticipant, seed: int, defects: frozenset[str]) -> str:
    misspelled = np.random.default_rng([seed, p.eid, 3]).integers(2) == 1
    return "manifest.cvs" if misspelled or "manifest_cvs" in defects else "manifest.csv"


def _members(
    p: SyntheticParticipant, scale: float, seed: int, defects: frozenset[str]
) -> list[tuple[str, bytes]]:
    session = _Session(p, seed)
    members, rows = _render(_acquire(p, scale, seed, defects, session), session)
    rng = np.random.default_rng([seed, p.eid, 5])
    if "no_manifest" not in defects:
        if "garbled_manifest" in defects:
            text = rng.integers(0, 256, 2048, dtype=np.uint8).tobytes()
        else:
            header = "filename,date,patientid,modality,seriesid,series discription"
            text = ("\n".join([header, *rows]) + "\n").encode()
        members.append((_manifest_name(p, seed, defects), text))
    if "non_dicom_member" in defects:
        members.append((f"{session.uid('stray')}.dcm", b"ageatlas synthetic: this member is not DICOM\n"))
    if "path_traversal_member" in defects:
        members.append(("../evil.dcm", b"ageatlas synthetic: a member that escapes the extraction folder\n"))
    order = rng.permutation(len(members))  # zip order says nothing about series order
    return [members[i] for i in order]


def _zip_bytes(members: list[tuple[str, bytes]], when: dt.date) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(when.year, when.month, when.day, 12, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compresslevel=1)
    return buf.getvalue()


def write_participant_zip(
    path: str | Path,
    participant: SyntheticParticipant,
    *,
    scale: float = 1.0,
    defects: Sequence[str] = (),
    seed: int | None = None,
) -> None:
    """Write one participant's field-20201 zip (see the module docstring); ``seed`` None means 0."""
    defects, seed = _check_defects(defects), _seed(seed)
    path = Path(path)
    if "zero_bytes" in defects:
        path.write_bytes(b"")
        return
    members = [] if "empty_zip" in defects else _members(participant, scale, seed, defects)
    data = _zip_bytes(members, _Session(participant, seed).date)
    if "truncated_zip" in defects:
        data = data[: len(data) // 2]
    path.write_bytes(data)


# --------------------------------------------------------------------------
# Truth and cohort
# --------------------------------------------------------------------------
def region_table() -> pd.DataFrame:
    """Label value, region name and whether biological age changes the region."""
    return pd.DataFrame(
        {
            "value": list(REGION_LABELS),
            "name": list(REGION_LABELS.values()),
            "age_region": [int(name in AGE_REGIONS) for name in REGION_LABELS.values()],
        }
    )


def write_truth(
    out_dir: str | Path, participant: SyntheticParticipant, *, spacing_mm=(4.0, 4.0, 4.0)
) -> dict[str, Path]:
    """Write the participant's region label map and the label table.

    The map ``{eid}_regions.nii.gz`` (uint8) covers every station's field of
    view on a regular grid; its affine maps voxels to RAS mm (x_RAS = -x_LPS,
    y_RAS = -y_LPS), in the same world frame as the DICOM
    ImagePositionPatient, with voxel axes along patient left, posterior and
    superior. ``regions.tsv`` lists value, name and age_region (0/1).
    Returns {"label_map": ..., "label_table": ...}.
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
    label_table = out / "regions.tsv"
    region_table().to_csv(label_table, sep="\t", index=False)
    return {"label_map": label_map, "label_table": label_table}


def write_cohort(
    out_dir: str | Path,
    participants: Sequence[SyntheticParticipant],
    *,
    scale: float = 1.0,
    defects_by_eid: Mapping[int, Sequence[str]] | None = None,
    seed: int = 0,
) -> None:
    """Write a cohort: one zip per participant, ``phenotypes.csv``, ``truth/`` and ``truth.tsv``.

    ``truth/`` holds one region label map per participant at 4 mm plus
    ``regions.tsv``; ``truth.tsv`` lists eid, sex, age, bmi, age_offset,
    biological_age and the participant's defects (comma-separated, empty if none).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    defects_by_eid = {int(k): list(v) for k, v in (defects_by_eid or {}).items()}
    unknown = set(defects_by_eid) - {p.eid for p in participants}
    if unknown:
        raise ValueError(f"defects given for eids not in the cohort: {sorted(unknown)}")
    for i, p in enumerate(participants, 1):
        defects = defects_by_eid.get(p.eid, ())
        write_participant_zip(out / layout.zip_name(p.eid), p, scale=scale, defects=defects, seed=seed)
        write_truth(out / "truth", p)
        log.info("SYNTHETIC participant %d/%d: eid %s, age %.1f, sex %d, BMI %.1f%s", i, len(participants),
                 p.eid, p.age, p.sex, p.bmi, f", defects {', '.join(defects)}" if defects else "")
    phenotype_table(participants).to_csv(out / "phenotypes.csv", index=False)
    truth = pd.DataFrame(
        {
            "eid": [p.eid for p in participants],
            "sex": [p.sex for p in participants],
            "age": [p.age for p in participants],
            "bmi": [p.bmi for p in participants],
            "age_offset": [p.age_offset for p in participants],
            "biological_age": [round(p.biological_age, 2) for p in participants],
            "defects": [",".join(defects_by_eid.get(p.eid, [])) for p in participants],
        }
    )
    truth.to_csv(out / "truth.tsv", sep="\t", index=False)


__all__ = [
    "AGE_REGIONS",
    "DEFECTS",
    "REGION_LABELS",
    "SyntheticParticipant",
    "defect_station",
    "make_cohort",
    "phenotype_table",
    "region_labels",
    "region_table",
    "tissue_signal",
    "write_cohort",
    "write_participant_zip",
    "write_truth",
]
