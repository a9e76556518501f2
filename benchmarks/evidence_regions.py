"""Where the model's evidence is, on a finished SYNTHETIC run: replace a region, see the age move.

For the first --n test participants of each group (its model, caches, stitched
images, registrations and the cohort's truth label maps), the body is split by
the truth labels into the planted age regions, the other muscle, the rest of
the body and the background. Each part in turn is replaced by the participant's
integrated-gradients reference (the group atlas in the body, as
``gradcam.reference: group_atlas``), voxel by voxel in proportion to the part's
share of the model's input voxel, and the prediction's change is recorded
beside the integrated-gradients map's sum over the same part. The parts' shares
of a voxel add up to 1, so both sets of numbers split f(volume) - f(reference).

What it tells: if replacing the other muscle moves the prediction as much as
its attribution says, the maps are faithful there, and a map's enrichment in
the age regions is bounded by how much the model itself rests on them (here
called the model's share), not by the attribution method.

    PYTHONPATH=src .venv/bin/python benchmarks/evidence_regions.py --results results/demo \
        --save benchmarks/records/evidence_regions_demo.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from run_inputs import against_group_atlas

from ageatlas.age.model import load_trained
from ageatlas.age.preprocess import downsample
from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import paths
from ageatlas.explain.reference_attribution import attribute_against_reference
from ageatlas.explain.truth import labels_on
from ageatlas.synthetic.phantom import AGE_LABELS, REGION_LABELS

MUSCLE = [v for v, name in REGION_LABELS.items() if name == "muscle"]


def part_shares(labels: np.ndarray, factor: int) -> dict[str, np.ndarray]:
    """Each part's share of every model-input voxel (block means of the stitched-grid labels)."""
    age = np.isin(labels, AGE_LABELS)
    muscle = np.isin(labels, MUSCLE)
    body = labels > 0
    masks = {"age_regions": age, "other_muscle": muscle, "rest_of_body": body & ~age & ~muscle}
    masks["background"] = ~body
    return {name: downsample(mask.astype(np.float32), factor) for name, mask in masks.items()}


def region_evidence(model, volume, reference, shares: dict[str, np.ndarray], steps: int) -> dict:
    """Prediction change when each part is replaced by the reference, and the map's sum there."""
    attribution, predicted, delta = attribute_against_reference(
        model, volume, reference, "integrated_gradients", steps=steps, batch=steps
    )
    attribution = attribution.numpy()
    row = {"predicted": predicted, "total_change": delta}
    with torch.no_grad():
        for name, share in shares.items():
            weight = torch.from_numpy(share)[None, None].to(volume)
            replaced = volume + weight * (reference - volume)
            row[f"{name}_replaced"] = predicted - float(model(replaced).reshape(-1)[0])
            row[f"{name}_attributed"] = float((attribution * share).sum())
            row[f"{name}_abs_attributed"] = float((np.abs(attribution) * share).sum())
    return row


def summarise(records: list[dict], parts) -> dict:
    """Per part: mean |change| when replaced, mean |sum of the map|, their correlation, and the
    part's share of all |change| (the model's) and of all |map| (the attribution's)."""
    out = {}
    total_replaced = sum(np.mean([abs(r[f"{p}_replaced"]) for r in records]) for p in parts)
    total_abs = sum(np.mean([r[f"{p}_abs_attributed"] for r in records]) for p in parts)
    for part in parts:
        replaced = np.array([r[f"{part}_replaced"] for r in records])
        attributed = np.array([r[f"{part}_attributed"] for r in records])
        abs_attributed = np.array([r[f"{part}_abs_attributed"] for r in records])
        spread = replaced.std() > 0 and attributed.std() > 0
        out[part] = {
            "mean_abs_replaced": float(np.abs(replaced).mean()),
            "mean_abs_attributed_sum": float(np.abs(attributed).mean()),
            "correlation": float(np.corrcoef(replaced, attributed)[0, 1]) if spread else None,
            "share_of_replaced": float(np.abs(replaced).mean() / total_replaced),
            "share_of_abs_map": float(abs_attributed.mean() / total_abs),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="a finished SYNTHETIC run")
    parser.add_argument("--n", type=int, default=3, help="test participants per group")
    parser.add_argument("--steps", type=int, default=8, help="integrated-gradients steps")
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    results = args.results
    cohort = read_participant_tsv(results / paths.COHORT_TABLE)
    model, meta = load_trained(results / paths.AGE_MODEL / "checkpoint.pt", "cpu")
    test = cohort[cohort["split"] == "test"].sort_values(["group", "eid"])
    records = []
    for eid, group in test.groupby("group").head(args.n)[["eid", "group"]].itertuples(False):
        participant, volume, reference = against_group_atlas(results, eid, group, meta)
        image = participant.stitched
        truth = nib.load(str(results / paths.SYNTHETIC / "truth" / f"{eid}_regions.nii.gz"))
        labels = np.asarray(labels_on(image, truth).dataobj)
        shares = part_shares(labels, participant.factor)
        row = region_evidence(model, volume, reference, shares, args.steps)
        records.append({"eid": str(eid), "group": group, **row})
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in records[-1].items()})
    summary = summarise(records, ["age_regions", "other_muscle", "rest_of_body", "background"])
    print(json.dumps(summary, indent=1))
    if args.save:
        command = "benchmarks/evidence_regions.py " + " ".join(sys.argv[1:])
        record = {"command": command, "participants": records, "summary": summary}
        args.save.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
