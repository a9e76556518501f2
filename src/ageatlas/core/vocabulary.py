"""The workflow's stable names: sexes, BMI groups, age bands, ageing classes, splits, map subsets,
attribution methods.

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

#: gradcam.method values. Layer methods weigh a layer's activations by their
#: gradients (one backward pass); reference methods attribute every input voxel
#: against a reference volume (integrated gradients, occlusion of blocks).
CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam_signed", "hirescam")
REFERENCE_METHODS: tuple[str, ...] = ("integrated_gradients", "occlusion")
#: Methods whose maps keep their sign (contributions in years, not a ReLU'd weight).
SIGNED_METHODS: tuple[str, ...] = ("gradcam_signed", "hirescam", *REFERENCE_METHODS)


def group_names() -> list[str]:
    """The six sex x BMI groups, e.g. F_healthy, M_obese."""
    return [f"{sex}_{bmi}" for sex in SEXES for bmi in BMI_GROUPS]
