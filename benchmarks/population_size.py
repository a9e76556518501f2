"""How a population map's concentration in the age regions grows with the maps it averages.

On a finished SYNTHETIC run, each group's test maps (warped to its atlas) are
drawn at random, --repeats times for each size in --sizes, and each draw's
population maps (``mean_map``: mean |map| and the per-year slopes on the
predicted and on the chronological age, as the population_map rule makes them) are scored as the
truth_check rule scores the group's own: enrichment in the planted age
regions of the group's consensus labels, divided by the ceiling (the planted
mask at the map's resolution, warped the same way) of the same participants.
A share that rises with n points at participant-level noise that averaging
removes; one that stays flat points at the model or the method. With
--adjust-bmi the per-year slopes are taken with BMI held fixed (each age's
residual on the draw's BMI: by Frisch-Waugh-Lovell, the age's coefficient in
map ~ age + BMI), so evidence that follows BMI within a group cancels too.

    PYTHONPATH=src .venv/bin/python benchmarks/population_size.py --results results/demo \
        --sizes 3 5 --save benchmarks/records/population_size_demo.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import paths
from ageatlas.explain.gradcam import read_participant
from ageatlas.explain.maps import mean_map, smooth
from ageatlas.explain.register import RegistrationFailed, load_outcome
from ageatlas.explain.truth import (
    enrichment,
    labels_in_atlas,
    labels_on,
    majority_labels,
    method_ceiling,
)
from ageatlas.synthetic.phantom import AGE_LABELS, REGION_LABELS

N_LABELS = max(REGION_LABELS) + 1


def group_members(results: Path, group: str, method: dict) -> tuple[list[dict], np.ndarray]:
    """Each registered test participant's warped map, predicted age and warped ceiling, and
    the group's consensus labels (majority of the deformably warped truth labels)."""
    cohort = read_participant_tsv(results / paths.COHORT_TABLE)
    predictions = pd.read_csv(
        results / paths.AGE / "predictions_corrected.tsv", sep="\t", dtype={"eid": str}
    ).set_index("eid")
    atlas = nib.load(str(results / paths.ATLAS / f"{group}.nii.gz"))
    members, warped_labels = [], []
    test = cohort[(cohort["group"] == group) & (cohort["split"] == "test")]
    bmi = test.set_index(test["eid"].astype(str))["bmi"]
    for eid in sorted(test["eid"].astype(str)):
        warped = results / paths.EXPLAIN / group / "warped" / f"{eid}.nii.gz"
        try:
            registration = load_outcome(
                results / paths.EXPLAIN / group / "registration" / f"{eid}.pt"
            )
        except (RegistrationFailed, FileNotFoundError):
            continue
        if not warped.exists() or eid not in predictions.index:
            continue
        labels = nib.load(str(results / paths.SYNTHETIC / "truth" / f"{eid}_regions.nii.gz"))
        warped_labels.append(labels_in_atlas(registration, labels, atlas)["deformable"])
        native = nib.load(str(results / paths.GRADCAM.format(eid=eid)))
        participant = read_participant(
            str(results / paths.CACHE).format(eid=eid),
            paths.stitched_path(results / paths.STITCHED.format(eid=eid), eid, "W"),
        )
        mask = np.isin(np.asarray(labels_on(native, labels).dataobj), AGE_LABELS)
        best = method_ceiling(mask.astype(np.float32), participant.factor, method)
        best = nib.Nifti1Image(best.astype(np.float32), native.affine)
        members.append(
            {
                "eid": eid,
                "map": str(warped),
                "predicted": float(predictions.loc[eid, "predicted"]),
                "age": float(predictions.loc[eid, "age"]),
                "bmi": float(bmi[eid]),
                "ceiling": np.asarray(registration.warp(best, order=1).dataobj, dtype=np.float64),
            }
        )
    return members, majority_labels(warped_labels, N_LABELS)


def score_draw(
    members: list[dict],
    consensus: np.ndarray,
    by_label: bool = False,
    fwhm_mm=None,
    adjust_bmi: bool = False,
) -> dict:
    """Share of the ceiling of one draw's mean |map| and per-year maps, smoothed by ``fwhm_mm``
    as the population_map rule does; with ``by_label``, also where the per-year map's mass sits
    (``per_year_mass_by_label``, :func:`mass_by_label`); with ``adjust_bmi``, the slopes at
    fixed BMI (:func:`bmi_residual`)."""
    predicted = [m["predicted"] for m in members]
    age = [m["age"] for m in members]
    if adjust_bmi:
        bmi = [m["bmi"] for m in members]
        predicted, age = bmi_residual(predicted, bmi), bmi_residual(age, bmi)
    maps = mean_map([m["map"] for m in members], predicted=predicted, age=age, fwhm_mm=fwhm_mm)
    affine = maps.mean.affine
    ceilings = [smooth(m["ceiling"], affine, fwhm_mm) for m in members]
    ceiling = enrichment(np.mean(ceilings, axis=0), consensus, AGE_LABELS)
    scored = {"mean": maps.mean, "per_year": maps.per_year, "per_year_of_age": maps.per_year_of_age}
    shares = {"ceiling": ceiling}
    for name, image in scored.items():
        shares[f"enrichment_{name}"] = enrichment(
            np.asarray(image.get_fdata()), consensus, AGE_LABELS
        )
        shares[name] = shares[f"enrichment_{name}"] / ceiling
    if by_label:
        shares["per_year_mass_by_label"] = mass_by_label(maps.per_year.get_fdata(), consensus)
    return shares


def bmi_residual(values, bmi) -> np.ndarray:
    """``values`` less their least-squares fit on BMI (with an intercept), plus their mean: a
    slope on these is the coefficient of ``values`` in a fit on them and BMI together."""
    values, design = np.asarray(values, float), np.column_stack([np.ones(len(bmi)), bmi])
    fitted = design @ np.linalg.lstsq(design, values, rcond=None)[0]
    return values - fitted + values.mean()


def mass_by_label(per_year: np.ndarray, consensus: np.ndarray) -> dict[str, float]:
    """Each body label's share of the per-year map's |mass| (and of the body's volume)."""
    mass = np.nan_to_num(np.abs(per_year))
    body = consensus > 0
    total = mass[body].sum()
    return {
        name: {
            "mass": float(mass[consensus == value].sum() / total),
            "volume": float((consensus == value).sum() / body.sum()),
        }
        for value, name in REGION_LABELS.items()
        if value > 0
    }


def draws(n_members: int, size: int, repeats: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``repeats`` random subsets of ``size`` members (one, all of them, when size >= n)."""
    if size >= n_members:
        return [np.arange(n_members)]
    return [np.sort(rng.choice(n_members, size, replace=False)) for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="a finished SYNTHETIC run")
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 5, 10, 20])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fwhm", type=float, nargs="+", default=[0.0], help="smoothing FWHMs (mm) to compare"
    )
    parser.add_argument(
        "--adjust-bmi", action="store_true", help="per-year slopes at fixed BMI (FWL residuals)"
    )
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    truth = pd.read_csv(args.results / paths.TRUTH_CHECK, sep="\t")
    rng = np.random.default_rng(args.seed)
    rows = []
    for _, check in truth.iterrows():
        group = check["group"]
        members, consensus = group_members(args.results, group, check)
        sizes = sorted({s for s in args.sizes if s < len(members)} | {len(members)})
        for fwhm, size in itertools.product(args.fwhm, sizes):
            everyone = size == len(members)
            shares = [
                score_draw([members[i] for i in draw], consensus, everyone, fwhm, args.adjust_bmi)
                for draw in draws(len(members), size, args.repeats, rng)
            ]
            row = {"group": group, "fwhm_mm": fwhm, "n": size, "draws": len(shares)}
            for name in ("mean", "per_year", "per_year_of_age"):
                values = [s[name] for s in shares]
                row[f"share_{name}_median"] = float(np.median(values))
                row[f"share_{name}_min"] = float(np.min(values))
            if everyone:
                for name in (
                    "ceiling",
                    "enrichment_mean",
                    "enrichment_per_year",
                    "enrichment_per_year_of_age",
                    "per_year_mass_by_label",
                ):
                    row[name] = shares[0][name]
            rows.append(row)
            print({k: v for k, v in row.items() if k != "per_year_mass_by_label"}, flush=True)
    table = pd.DataFrame(rows).drop(columns="per_year_mass_by_label")
    print(table.round(3).to_string(index=False))
    if args.save:
        command = "benchmarks/population_size.py " + " ".join(sys.argv[1:])
        args.save.write_text(json.dumps({"command": command, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
