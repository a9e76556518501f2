"""The workflow's stable names: sexes, BMI groups, age bands, ageing classes, splits, map subsets.

They appear in file names and as Snakemake wildcards, so they never change
spelling; every module takes them from here. Kept free of heavy imports:
the workflow reads them while it builds the DAG.
"""

from __future__ import annotations

#: UK Biobank field 31 code -> the sex letter used in group names.
SEX_CODES = {0: "F", 1: "M"}
SEXES: tuple[str, ...] = ("F", "M")
BMI_GROUPS: tuple[str, ...] = ("healthy", "overweight", "obese")
AGE_BANDS: tuple[str, ...] = ("lt60", "60to70", "ge70")
AGEING_CLASSES: tuple[str, ...] = ("accelerated", "aligned", "decelerated")
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Population-map subsets of one group, as used in file names and targets.
SUBSETS: tuple[str, ...] = (
    "all",
    *(f"age_band-{band}" for band in AGE_BANDS),
    *(f"ageing_class-{cls}" for cls in AGEING_CLASSES),
)


def group_names() -> list[str]:
    """The six sex x BMI groups, e.g. F_healthy, M_obese."""
    return [f"{sex}_{bmi}" for sex in SEXES for bmi in BMI_GROUPS]
