"""Attribution methods compared on a finished SYNTHETIC run, where the truth is known.

For every test participant of a finished run (its trained age model, caches,
stitched images, registrations to the group atlases and the planted truth
labels), each method's map is computed once and scored:

  native       enrichment of |map| in the planted age regions, per participant
               (mean and median over a group), and the maps that came out empty
  population   the maps warped into the group atlas (the run's own
               registrations, voxels outside a participant's field of view left
               out), averaged, scored against the consensus labels
  ceiling      the same two scores for the planted mask pooled to the method's
               cells and placed back as its maps are (its resolution's best)
  occlusion    Spearman rank correlation, over occlusion blocks, of |map| with
               |occlusion| (captum, blocks of --block voxels against the method's
               reference: the mean training volume, or for group_atlas the
               participant's atlas reference) on the first --occlusion test participants
  seconds      per participant, at the run's input size

    .venv/bin/python benchmarks/attribution.py --results results/demo \
        --save benchmarks/records/attribution_demo.tsv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from ageatlas.age.model import load_trained
from ageatlas.age.preprocess import downsample
from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import paths
from ageatlas.explain.gradcam import (
    grad_cam,
    map_grid,
    model_seed,
    read_participant,
    to_stitched_grid,
)
from ageatlas.explain.reference_attribution import (
    atlas_in_body,
    attribute_against_reference,
    reference_volume,
)
from ageatlas.explain.register import RegistrationFailed, load_outcome
from ageatlas.explain.truth import (
    enrichment,
    labels_in_atlas,
    labels_on,
    majority_labels,
    resolution_ceiling,
)
from ageatlas.synthetic.phantom import AGE_LABELS, REGION_LABELS

# (method, layer, placement); the first is the paper's Grad-CAM as M3d-CAM placed it.
METHODS = [
    ("gradcam", "layer3", "m3dcam"),
    ("gradcam", "layer3", "receptive_field"),
    ("gradcam", "layer2", "receptive_field"),
    ("gradcam_signed", "layer3", "receptive_field"),
    ("hirescam", "layer3", "receptive_field"),
    ("hirescam", "layer2", "receptive_field"),
    ("integrated_gradients", "input", "input"),
    # against the group atlas brought into each body (gradcam.reference: group_atlas)
    ("integrated_gradients", "input", "group_atlas"),
]


def reference_of(method: tuple) -> str:
    """The key of a method's reference: "group_atlas" or "input" (the mean training volume;
    layer methods are compared with occlusion against it)."""
    return "group_atlas" if method[2] == "group_atlas" else "input"


def method_map(model, volume, references, method, layer, placement, steps) -> torch.Tensor:
    """The method's map on the input grid, scaled as the workflow's default does.

    ``references``: {"input": the mean training volume, "group_atlas": the
    participant's atlas reference}, for integrated gradients (by placement).
    """
    if method == "integrated_gradients":
        reference = references[reference_of((method, layer, placement))]
        return attribute_against_reference(
            model, volume, reference, method, steps=steps, batch=steps
        )[0]
    return grad_cam(
        model,
        volume,
        getattr(model.backbone, layer),
        method=method,
        normalise=method == "gradcam",
        placement=placement,
    ).map


def block_rho(a: np.ndarray, b: np.ndarray, block: int) -> float:
    """Spearman correlation of |a| and |b| block-averaged to occlusion's blocks."""
    pa, pb = (downsample(np.abs(x).astype(np.float32), block).ravel() for x in (a, b))
    return float(spearmanr(pa, pb).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--occlusion", type=int, default=6, help="participants for occlusion")
    parser.add_argument("--block", type=int, default=4)
    parser.add_argument("--steps", type=int, default=32, help="integrated gradients' steps")
    parser.add_argument("--checkpoint", type=Path, help="another model (default: the run's own)")
    parser.add_argument(
        "--methods", nargs="*", help="a subset of the methods, as method:layer:placement"
    )
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    methods = [tuple(m.split(":")) for m in args.methods] if args.methods else METHODS
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; known: {METHODS}")
    results = args.results
    truth = results / paths.SYNTHETIC / "truth"
    cohort = read_participant_tsv(results / paths.COHORT_TABLE)
    checkpoint = args.checkpoint or results / paths.AGE_MODEL / "checkpoint.pt"
    model, meta = load_trained(checkpoint, "cpu")
    cache = results / paths.CACHE
    reference = reference_volume(
        str(cache).format(eid=e) for e in cohort.loc[cohort["split"] == "train", "eid"]
    )
    reference = torch.from_numpy(reference)[None, None]
    test = cohort[cohort["split"] == "test"].sort_values(["group", "eid"])

    rows, seconds, rho = [], {m: [] for m in methods}, {m: [] for m in methods}
    occluded = 0  # participants with occlusion maps so far
    for group, members in test.groupby("group"):
        atlas = nib.load(results / paths.ATLAS / f"{group}.nii.gz")
        per_method = {
            m: {"native": [], "ceiling": [], "empty": 0, "warped": [], "best": []} for m in methods
        }
        warped_labels = []
        for eid in members["eid"]:
            stitched = results / paths.STITCHED.format(eid=eid)
            water = nib.load(paths.stitched_path(stitched, eid, "W"))
            truth_labels = nib.load(truth / f"{eid}_regions.nii.gz")
            label_data = np.asarray(labels_on(water, truth_labels).dataobj)
            mask = np.isin(label_data, AGE_LABELS).astype(np.float32)
            try:
                registration = load_outcome(
                    results / paths.EXPLAIN / group / "registration" / f"{eid}.pt"
                )
                in_atlas = labels_in_atlas(registration, truth_labels, atlas)
                warped_labels.append(in_atlas["deformable"])
            except RegistrationFailed:
                registration = None
            # The participant as the workflow's gradcam rule reads it.
            participant = read_participant(str(cache).format(eid=eid), water.get_filename())
            factor = participant.factor
            volume = participant.volume(model_seed(meta))
            references = {"input": reference}
            if registration is not None:
                references["group_atlas"] = atlas_in_body(registration, atlas, participant, volume)
            # Occlusion against each reference a method uses (the mean volume for layer methods).
            occlusions = {}
            if occluded < args.occlusion:
                occluded += 1
                for key in {reference_of(m) for m in methods} & references.keys():
                    occlusions[key] = attribute_against_reference(
                        model, volume, references[key], "occlusion", block=args.block, batch=16
                    )[0].numpy()
            for m in methods:
                if reference_of(m) not in references:
                    continue  # no registration: no atlas in this body
                start = time.perf_counter()
                on_input = method_map(model, volume, references, *m, args.steps).numpy()
                seconds[m].append(time.perf_counter() - start)
                occlusion = occlusions.get(reference_of(m))
                if occlusion is not None:
                    rho[m].append(block_rho(on_input, occlusion, args.block))
                on_grid = to_stitched_grid(on_input, label_data.shape, factor)
                scores = per_method[m]
                scores["native"].append(enrichment(on_grid, label_data, AGE_LABELS))
                scores["empty"] += int(not np.any(on_input != 0))
                geometry, cells = map_grid(m[0], m[1], m[2], on_input.shape)
                best = resolution_ceiling(mask, factor, geometry, cells)
                scores["ceiling"].append(enrichment(best, label_data, AGE_LABELS))
                if registration is not None:
                    for key, data in (("warped", on_grid), ("best", best)):
                        image = nib.Nifti1Image(data.astype(np.float32), water.affine)
                        scores[key].append(
                            np.asarray(registration.warp(image, mark_outside=True).dataobj)
                        )
        consensus = majority_labels(warped_labels, max(REGION_LABELS) + 1)
        for m, scores in per_method.items():
            population = np.nanmean(np.abs(np.stack(scores["warped"])), axis=0)
            best = np.nanmean(np.stack(scores["best"]), axis=0)
            pop, pop_best = (enrichment(x, consensus, AGE_LABELS) for x in (population, best))
            rows.append(
                {
                    "method": m[0],
                    "layer": m[1],
                    "placement": m[2],
                    "group": group,
                    "n": len(scores["native"]),
                    "empty": scores["empty"],
                    "native_mean": np.nanmean(scores["native"]),
                    "native_median": np.nanmedian(scores["native"]),
                    "native_ceiling": np.nanmean(scores["ceiling"]),
                    "population": pop,
                    "population_ceiling": pop_best,
                    "share_of_ceiling": pop / pop_best,
                }
            )
        print(f"{group}: {len(members)} participants done", flush=True)
    table = pd.DataFrame(rows)
    summary = (
        table.groupby(["method", "layer", "placement"], sort=False)
        .agg(
            empty=("empty", "sum"),
            native_median=("native_median", "median"),
            population_min=("population", "min"),
            population_median=("population", "median"),
            ceiling_median=("population_ceiling", "median"),
            share_min=("share_of_ceiling", "min"),
        )
        .reset_index()
    )
    summary["seconds"] = [np.mean(seconds[m]) for m in methods]
    summary["occlusion_rho"] = [np.mean(rho[m]) if rho[m] else np.nan for m in methods]
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format="%.2f"))
    print(summary.to_markdown(index=False, floatfmt=".2f"))
    if args.save:
        table.to_csv(args.save, sep="\t", index=False, float_format="%.3f")
        summary.to_csv(
            args.save.with_suffix(".summary.tsv"), sep="\t", index=False, float_format="%.3f"
        )


if __name__ == "__main__":
    main()
