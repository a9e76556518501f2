"""Age changes only the age regions, the planted way; sex and BMI shape the body."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np
from synthetic_helpers import AGE_VALUES, LABEL, lps_axes, read_zip, volume, write

from ageatlas.synthetic.participants import SyntheticParticipant
from ageatlas.synthetic.phantom import AGE_REGIONS, REGION_LABELS, region_labels, tissue_signal


def test_age_changes_only_the_age_regions(tmp_path, participant):
    young = replace(participant, age=50.0, age_offset=0.0)
    old = replace(participant, age=80.0, age_offset=0.0)
    a = read_zip(write(tmp_path, young, "young.zip"))
    b = read_zip(write(tmp_path, old, "old.zip"))
    changed_in = defaultdict(int)
    for number in range(1, 25):
        diff = volume(b[number]) != volume(a[number])
        labels = region_labels(young, *lps_axes(a[number]))
        assert np.array_equal(labels, region_labels(old, *lps_axes(a[number])))
        assert np.isin(labels[diff], AGE_VALUES).all(), (
            f"series {number} changed outside the age regions"
        )
        for value in np.unique(labels[diff]):
            changed_in[REGION_LABELS[value]] += int((labels[diff] == value).sum())
    assert changed_in["back_muscle"] > 100 and changed_in["heart"] > 20


def test_age_effects_point_the_planted_way(participant):
    x = np.arange(-248.0, 250.0, 3.0)
    y = np.arange(-192.0, 194.0, 3.0)
    z = np.arange(-600.0, 100.0, 2.0)  # fine along z so thin discs are sampled
    young = replace(participant, age=50.0, age_offset=0.0)
    old = replace(participant, age=60.0, age_offset=20.0)  # biological age is what counts
    labels = region_labels(young, x, y, z)
    (w0, f0), (w1, f1) = tissue_signal(young, x, y, z), tissue_signal(old, x, y, z)
    outside = ~np.isin(labels, AGE_VALUES)
    assert np.array_equal(w0[outside], w1[outside]) and np.array_equal(f0[outside], f1[outside])
    m = {name: labels == LABEL[name] for name in AGE_REGIONS}
    assert all(mask.sum() > 50 for mask in m.values())
    assert (
        w1[m["intervertebral_disc"]].mean() < w0[m["intervertebral_disc"]].mean() - 0.05
    )  # thinner discs
    assert (
        w1[m["intervertebral_disc"]].max() < w0[m["intervertebral_disc"]].max() - 0.1
    )  # drier discs
    assert w1[m["back_muscle"]].mean() < w0[m["back_muscle"]].mean() - 0.05
    assert f1[m["back_muscle"]].mean() > f0[m["back_muscle"]].mean() + 0.05
    assert w1[m["heart"]].mean() > w0[m["heart"]].mean() + 0.02  # more myocardium, less blood
    assert w1[m["aorta"]].mean() > w0[m["aorta"]].mean() + 0.02  # more lumen, less periaortic fat


def test_age_effect_scale_multiplies_the_planted_change(participant):
    x, y, z = (
        np.arange(-150.0, 150.0, 4.0),
        np.arange(-150.0, 150.0, 4.0),
        np.arange(-300.0, 0.0, 2.0),
    )
    labels = region_labels(participant, x, y, z)
    heart = labels == LABEL["heart"]

    def heart_water(age, scale):
        return tissue_signal(
            replace(participant, age=age, age_offset=0.0, age_effect_scale=scale), x, y, z
        )[0][heart].mean()

    assert heart_water(50.0, 0.0) == heart_water(70.0, 0.0)  # scale 0: no planted ageing
    change = {scale: heart_water(64.0, scale) - heart_water(56.0, scale) for scale in (1.0, 3.0)}
    assert change[3.0] > 2.0 * change[1.0] > 0


def test_anatomy_varies_with_sex_and_bmi():
    x, y, z = (
        np.arange(-248.0, 250.0, 4.0),
        np.arange(-192.0, 194.0, 4.0),
        np.arange(-990.0, 110.0, 8.0),
    )

    def share(p, name):  # of the body volume
        labels = region_labels(p, x, y, z)
        return (labels == LABEL[name]).sum() / (labels != 0).sum()

    lean_m = SyntheticParticipant(1000001, 1, 60.0, 21.0)
    obese_m = replace(lean_m, bmi=36.0)
    obese_f = replace(obese_m, sex=0)
    assert share(obese_m, "subcutaneous_fat") > 1.5 * share(lean_m, "subcutaneous_fat")
    assert share(obese_m, "visceral_fat") > 1.3 * share(lean_m, "visceral_fat")
    assert share(obese_f, "subcutaneous_fat") > 1.5 * share(
        obese_m, "subcutaneous_fat"
    )  # women: more subcutaneous
    assert share(obese_m, "visceral_fat") > 1.8 * share(
        obese_f, "visceral_fat"
    )  # men: more visceral
    assert share(obese_f, "heart") < share(obese_m, "heart")
