"""Integrated gradients with fewer steps, on a finished run: how far from the finest map?

For the first --n test participants of a run (its model, caches, stitched
images and registrations), the integrated-gradients map against the
participant's group atlas (``gradcam.reference: group_atlas``) is computed
with each of --steps, and compared with the map of the most steps: Pearson
correlation over the voxels, and the completeness gap |sum of the map -
(f(volume) - f(reference))| in years. Where fewer steps give the same map,
the attribution rule can take fewer (its cost is linear in the steps).

    PYTHONPATH=src .venv/bin/python benchmarks/ig_convergence.py --results results/demo \
        --steps 8 16 32 64 --save benchmarks/records/ig_convergence_demo.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from run_inputs import against_group_atlas

from ageatlas.age.model import load_trained
from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import paths
from ageatlas.explain.reference_attribution import attribute_against_reference


def agreement(model, volume, reference, steps: list[int]) -> list[dict]:
    """Per number of steps: correlation with the map of the most steps, and the completeness gap."""
    maps, rows = {}, []
    for n in sorted(steps):
        attribution, _, delta = attribute_against_reference(
            model, volume, reference, "integrated_gradients", steps=n, batch=n
        )
        maps[n] = attribution.numpy().ravel()
        rows.append({"steps": n, "completeness_gap": abs(float(attribution.sum()) - delta)})
    finest = maps[max(steps)]
    for row in rows:
        row["correlation_with_finest"] = float(np.corrcoef(maps[row["steps"]], finest)[0, 1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="a finished run")
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--n", type=int, default=6, help="test participants")
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    results = args.results
    cohort = read_participant_tsv(results / paths.COHORT_TABLE)
    model, meta = load_trained(results / paths.AGE_MODEL / "checkpoint.pt", "cpu")
    test = cohort[cohort["split"] == "test"].sort_values(["group", "eid"]).head(args.n)
    records = []
    for eid, group in zip(test["eid"], test["group"]):
        _, volume, reference = against_group_atlas(results, eid, group, meta)
        for row in agreement(model, volume, reference, args.steps):
            records.append({"eid": str(eid), "group": group, **row})
            print(records[-1], flush=True)
    summary = {
        n: {
            "min_correlation": min(r["correlation_with_finest"] for r in rows),
            "max_completeness_gap": max(r["completeness_gap"] for r in rows),
        }
        for n in args.steps
        for rows in [[r for r in records if r["steps"] == n]]
    }
    print(json.dumps(summary, indent=1))
    if args.save:
        args.save.write_text(json.dumps({"participants": records, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
