"""benchmarks/population_size.py: draws of a group's maps, scored against the truth labels."""

import nibabel as nib
import numpy as np
import population_size as bench
import pytest


def test_draws_are_distinct_members_or_everyone():
    rng = np.random.default_rng(0)
    assert [d.tolist() for d in bench.draws(4, 4, 3, rng)] == [[0, 1, 2, 3]]
    subsets = bench.draws(10, 3, 5, rng)
    assert len(subsets) == 5
    assert all(len(set(d)) == 3 and d.max() < 10 for d in subsets)


def two_regions() -> tuple[np.ndarray, np.ndarray]:
    """Consensus labels of a 4 x 4 x 4 body, half an age region and half muscle, and the age
    region's mask."""
    consensus = np.full((4, 4, 4), 2, np.uint8)  # muscle
    consensus[:2] = bench.AGE_LABELS[0]
    return consensus, consensus == bench.AGE_LABELS[0]


def member(tmp_path, i: int, data, predicted: float, age_region, **more) -> dict:
    """Member ``i`` of a draw: its map written to ``tmp_path``, the age mask its ceiling, the
    prediction its age."""
    path = tmp_path / f"{i}.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)), path)
    return {
        "map": str(path),
        "predicted": predicted,
        "age": predicted,
        "ceiling": age_region.astype(float),
        **more,
    }


def members_on(tmp_path, n: int, rng) -> tuple[list[dict], np.ndarray]:
    """n maps whose age region rises 1 per year of predicted age and whose other half is noise
    that does not; the ceiling is the age mask itself."""
    consensus, age = two_regions()
    members = [
        member(
            tmp_path,
            i,
            np.where(age, predicted - 60.0, rng.normal(0, 3, age.shape)),
            predicted,
            age,
        )
        for i, predicted in enumerate(rng.uniform(45, 80, n))
    ]
    return members, consensus


def test_a_map_whose_noise_cancels_reaches_the_ceiling_per_year_only(tmp_path):
    members, consensus = members_on(tmp_path, 40, np.random.default_rng(1))
    shares = bench.score_draw(members, consensus)
    assert shares["per_year"] == pytest.approx(1.0, abs=0.1)
    assert shares["per_year_of_age"] == pytest.approx(shares["per_year"])  # here age = prediction
    assert shares["mean"] < shares["per_year"] - 0.1  # |noise| does not cancel in the mean |map|
    few = bench.score_draw(members[:3], consensus)
    assert few["per_year"] < shares["per_year"]


def test_the_per_year_mass_sits_in_the_age_region_when_only_it_rises(tmp_path):
    members, consensus = members_on(tmp_path, 40, np.random.default_rng(2))
    by_label = bench.score_draw(members, consensus, by_label=True)["per_year_mass_by_label"]
    age_name = bench.REGION_LABELS[bench.AGE_LABELS[0]]
    assert by_label[age_name]["volume"] == pytest.approx(0.5)
    assert by_label[age_name]["mass"] > 0.9
    assert by_label["muscle"]["mass"] == pytest.approx(1 - by_label[age_name]["mass"])


def test_smoothing_lowers_the_ceiling_with_the_maps(tmp_path):
    """A smoothed draw is scored against the ceiling smoothed alike: the best map a 2 mm kernel
    allows is no longer the sharp mask."""
    members, consensus = members_on(tmp_path, 10, np.random.default_rng(2))
    sharp = bench.score_draw(members, consensus)
    smoothed = bench.score_draw(members, consensus, fwhm_mm=2.0)
    assert smoothed["ceiling"] < sharp["ceiling"]
    assert smoothed["enrichment_per_year"] < sharp["enrichment_per_year"]


def test_bmi_residual_gives_the_coefficient_of_a_fit_on_age_and_bmi():
    rng = np.random.default_rng(3)
    bmi = rng.uniform(25, 30, 8)
    age = 60 + 2 * (bmi - 27) + rng.normal(0, 3, 8)
    y = rng.normal(0, 1, 8)
    design = np.column_stack([np.ones(8), age, bmi])
    coefficient = np.linalg.lstsq(design, y, rcond=None)[0][1]
    residual = bench.bmi_residual(age, bmi)
    assert np.polyfit(residual, y, 1)[0] == pytest.approx(coefficient)
    assert residual.mean() == pytest.approx(age.mean())


def test_evidence_that_follows_bmi_cancels_at_fixed_bmi(tmp_path):
    """The age region rises with the prediction; the muscle follows BMI, which the predictions
    follow too: it enters the per-year map, and leaves it when BMI is held fixed."""
    rng = np.random.default_rng(4)
    consensus, age_region = two_regions()
    members = []
    for i in range(12):
        bmi, own = rng.uniform(25, 30), rng.normal(0, 5)
        predicted = 60 + 3 * (bmi - 27.5) + own
        data = np.where(age_region, own, bmi - 27.5)
        members.append(member(tmp_path, i, data, predicted, age_region, bmi=bmi))
    plain = bench.score_draw(members, consensus)
    fixed = bench.score_draw(members, consensus, adjust_bmi=True)
    assert plain["per_year"] < 0.9
    assert fixed["per_year"] == pytest.approx(1.0, abs=0.01)
