"""Synthetic participants (sex, age, BMI, biological-age offset) and their phenotype table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SyntheticParticipant:
    """One synthetic participant; ``sex`` uses UK Biobank coding (0 female, 1 male)."""

    eid: int
    sex: int
    age: float  # chronological age at the imaging visit, years
    bmi: float
    age_offset: float = 0.0  # biological minus chronological age, years
    age_effect_scale: float = 1.0  # multiplies every planted per-decade age effect
    # Where the body lies in the scanner (LPS mm, x y z) relative to the reference position:
    # participants are positioned by hand on the table, so anatomy is never at the same
    # world position twice and the population maps need registration.
    table_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

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
    position_sd_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> list[SyntheticParticipant]:
    """A deterministic synthetic cohort of ``n`` participants.

    Sexes alternate before shuffling (balanced to one); within each sex the
    three BMI groups take turns (balanced to one); ages are stratified so they
    spread uniformly over ``age_range``; age offsets are normal (s.d.
    ``offset_sd``, clipped at 3 s.d.). Table offsets are normal per axis
    (s.d. ``position_sd_mm``, LPS x y z, clipped at 2 s.d.), drawn from their
    own stream so that a cohort with and without them differs in nothing
    else. Values are rounded to 0.01 (offsets to 0.1 mm) and the phantom uses
    the rounded values.
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
        bmis[idx] = (
            np.floor(rng.uniform(lo, hi) * 100) / 100
        )  # floor keeps each group's upper bound open
    lo, hi = age_range
    ages = lo + (rng.permutation(n) + rng.uniform(size=n)) / n * (hi - lo)
    offsets = np.clip(rng.normal(0.0, offset_sd, n), -3 * offset_sd, 3 * offset_sd)
    position_sd = np.asarray(position_sd_mm, dtype=float)
    if position_sd.shape != (3,) or np.any(position_sd < 0):
        raise ValueError(f"position_sd_mm must be 3 non-negative numbers, got {position_sd_mm}")
    table = np.random.default_rng([seed, 0x7AB1E]).normal(size=(n, 3)).clip(-2, 2) * position_sd
    return [
        SyntheticParticipant(
            eid=first_eid + i,
            sex=int(sexes[i]),
            age=round(float(ages[i]), 2),
            bmi=float(bmis[i]),
            age_offset=round(float(offsets[i]), 2),
            age_effect_scale=float(age_effect_scale),
            table_offset_mm=tuple(round(float(v), 1) for v in table[i]),
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


__all__ = [
    "BMI_GROUP_RANGES",
    "SyntheticParticipant",
    "make_cohort",
    "phenotype_table",
]
