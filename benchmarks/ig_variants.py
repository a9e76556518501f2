"""Variants of integrated gradients against the group atlas, scored as the truth check scores.

Asks whether the per-year maps' shortfall from their ceiling is noise that a
variant of the attribution removes. On a finished SYNTHETIC run with
``gradcam.reference: group_atlas``, each test participant's map is drawn
again by each variant, brought to the stitched grid, warped with the run's
own registration (NaN outside the field of view) and averaged per group as
the population_map rule does (``mean_map``); each group's mean |map| and
per-year map are scored against the consensus labels and divided by the
ceiling (the planted mask at the model input's resolution, warped alike).

  base          the workflow's map (``steps`` steps from the atlas in the body)
  highpass:S    the reference keeps the participant's own detail finer than a
                Gaussian of S input voxels (reference + volume - blur(volume)),
                so that detail is not attributed
  smoothgrad:S  captum's NoiseTunnel: the mean of 6 maps of the volume plus
                N(0, S) noise (input units: the cache is z-scored)
  smoothed:S    the base map smoothed (signed) by a Gaussian of S input voxels
  shifted:KxS   the mean over K^3 shifts of the input with S steps each
                (``gradcam.shifts``: K, ``steps``: S)

    PYTHONPATH=src .venv/bin/python benchmarks/ig_variants.py --results results/demo \
        --variants base highpass:0.6 smoothed:0.6 smoothgrad:0.2 shifted:2x4 \
        --save benchmarks/records/ig_variants_demo.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from captum.attr import IntegratedGradients, NoiseTunnel
from run_inputs import against_group_atlas
from scipy.ndimage import gaussian_filter

from ageatlas.age.model import load_trained
from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import paths
from ageatlas.explain.cells import CellGeometry
from ageatlas.explain.gradcam import to_stitched_grid
from ageatlas.explain.maps import mean_map
from ageatlas.explain.reference_attribution import attribute_against_reference
from ageatlas.explain.register import RegistrationFailed, load_outcome
from ageatlas.explain.truth import (
    enrichment,
    labels_in_atlas,
    labels_on,
    majority_labels,
    resolution_ceiling,
)
from ageatlas.synthetic.phantom import AGE_LABELS, REGION_LABELS

NOISE_SAMPLES = 6


def variant_map(model, volume, reference, variant: str, steps: int) -> np.ndarray:
    """One variant's map on the input grid (signed, channels summed)."""
    name, _, value = variant.partition(":")
    if name == "shifted":
        shifts, _, shift_steps = value.partition("x")
        return attribute_against_reference(
            model,
            volume,
            reference,
            "integrated_gradients",
            steps=int(shift_steps or steps),
            batch=int(shift_steps or steps),
            shifts=int(shifts),
        )[0].numpy()
    sigma = float(value or 0)
    if name == "highpass":
        own = volume[0, 0].numpy()
        detail = own - gaussian_filter(own, sigma)
        body = reference[0, 0].numpy() != own  # outside the body the reference is the volume
        shifted = np.where(body, reference[0, 0].numpy() + detail, own).astype(np.float32)
        reference = torch.from_numpy(shifted)[None, None]
    if name == "smoothgrad":
        attribution = NoiseTunnel(IntegratedGradients(model)).attribute(
            volume,
            baselines=reference,
            n_steps=steps,
            internal_batch_size=steps,
            nt_type="smoothgrad",
            nt_samples=NOISE_SAMPLES,
            stdevs=sigma,
        )
        return attribution.detach()[0].sum(0).numpy()
    if name not in ("base", "highpass", "smoothed"):
        raise ValueError(f"unknown variant {variant!r}")
    attribution = attribute_against_reference(
        model, volume, reference, "integrated_gradients", steps=steps, batch=steps
    )[0].numpy()
    return gaussian_filter(attribution, sigma) if name == "smoothed" else attribution


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="a finished SYNTHETIC run")
    parser.add_argument("--variants", nargs="+", default=["base"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    results = args.results
    cohort = read_participant_tsv(results / paths.COHORT_TABLE)
    predictions = pd.read_csv(
        results / paths.AGE / "predictions_corrected.tsv", sep="\t", dtype={"eid": str}
    ).set_index("eid")
    model, meta = load_trained(results / paths.AGE_MODEL / "checkpoint.pt", "cpu")
    model.eval()
    test = cohort[cohort["split"] == "test"].sort_values(["group", "eid"])
    scratch = Path(tempfile.mkdtemp(prefix="ig_variants_"))
    rows = []
    for group, members in test.groupby("group"):
        atlas = nib.load(results / paths.ATLAS / f"{group}.nii.gz")
        warped = {v: [] for v in args.variants}
        seconds = {v: [] for v in args.variants}
        ceilings, labels_warped, predicted, age = [], [], [], []
        for eid in members["eid"].astype(str):
            try:
                registration = load_outcome(
                    results / paths.EXPLAIN / group / "registration" / f"{eid}.pt"
                )
            except (RegistrationFailed, FileNotFoundError):
                continue
            water = nib.load(
                paths.stitched_path(results / paths.STITCHED.format(eid=eid), eid, "W")
            )
            truth = nib.load(results / paths.SYNTHETIC / "truth" / f"{eid}_regions.nii.gz")
            labels_warped.append(labels_in_atlas(registration, truth, atlas)["deformable"])
            labels = np.asarray(labels_on(water, truth).dataobj)
            participant, volume, reference = against_group_atlas(results, eid, group, meta)
            mask = np.isin(labels, AGE_LABELS).astype(np.float32)
            best = resolution_ceiling(
                mask, participant.factor, CellGeometry.identity(3), tuple(volume.shape[2:])
            )
            best = registration.warp(nib.Nifti1Image(best, water.affine), order=1)
            ceilings.append(np.asarray(best.dataobj, dtype=np.float64))
            predicted.append(float(predictions.loc[eid, "predicted"]))
            age.append(float(predictions.loc[eid, "age"]))
            for variant in args.variants:
                start = time.perf_counter()
                on_input = variant_map(model, volume, reference, variant, args.steps)
                seconds[variant].append(time.perf_counter() - start)
                grid = to_stitched_grid(on_input, labels.shape, participant.factor)
                image = nib.Nifti1Image(grid.astype(np.float32), water.affine)
                path = scratch / f"{variant}_{eid}.nii.gz"
                nib.save(registration.warp(image, order=1, mark_outside=True), str(path))
                warped[variant].append(str(path))
        consensus = majority_labels(labels_warped, max(REGION_LABELS) + 1)
        ceiling = enrichment(np.mean(ceilings, axis=0), consensus, AGE_LABELS)
        for variant in args.variants:
            maps = mean_map(warped[variant], predicted=predicted, age=age)
            mean, per_year = (
                enrichment(np.asarray(image.get_fdata()), consensus, AGE_LABELS)
                for image in (maps.mean, maps.per_year)
            )
            row = {
                "group": group,
                "variant": variant,
                "n": len(predicted),
                "ceiling": ceiling,
                "share_mean": mean / ceiling,
                "enrichment_per_year": per_year,
                "share_per_year": per_year / ceiling,
                "seconds": float(np.mean(seconds[variant])),
            }
            rows.append(row)
            print(row, flush=True)
    table = pd.DataFrame(rows)
    print(table.round(3).to_string(index=False))
    summary = table.groupby("variant", sort=False)[["share_mean", "share_per_year", "seconds"]]
    print(summary.agg(["min", "max"]).round(3).to_string())
    if args.save:
        command = "benchmarks/ig_variants.py " + " ".join(sys.argv[1:])
        args.save.write_text(json.dumps({"command": command, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
