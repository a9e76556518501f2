"""Which training settings make the demo's 3D model learn age, on any synthetic cohort?

Trains the 3D model on a finished run's training caches (train and val
splits, as the workflow does) with the demo's settings plus the overrides
given, predicts the test split with the best-validation checkpoint, and
prints one JSON line: test MAE, the mean predictor's MAE, the correlation of
the predictions with age, their spread, the best epoch, seconds. A linear
reference (``--ridge``: ridge regression on the cached voxels, train + val
-> test) says whether age is learnable from the inputs at all.

    PYTHONPATH=src .venv/bin/python benchmarks/demo_training.py --results results/demo \\
        --out /tmp/patience5 plateau_patience=5 --save benchmarks/records/demo_training.jsonl
    PYTHONPATH=src .venv/bin/python benchmarks/demo_training.py --results results/demo --ridge
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from ageatlas.age.predict import predict
from ageatlas.age.train import train
from ageatlas.age.train_config import TrainConfig
from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import paths
from ageatlas.core.files import load_npy

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="a finished run's results")
    parser.add_argument("--config", type=Path, default=REPO / "config" / "demo.yaml")
    parser.add_argument("--out", type=Path, help="training folder (state, metrics, checkpoint)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--ridge", action="store_true", help="the linear reference instead")
    parser.add_argument("--save", type=Path, help="append the JSON line here")
    parser.add_argument("overrides", nargs="*", help="train settings, key=value (YAML values)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cohort = read_participant_tsv(args.results / paths.COHORT_TABLE)
    splits = {s: items(args.results, cohort, s) for s in ("train", "val", "test")}
    if args.ridge:
        result = ridge(splits)
    else:
        if args.out is None:
            parser.error("--out is required to train")
        result = train_and_test(splits, args.config, args.overrides, args.out)
    result = {"results": str(args.results), **result}
    line = json.dumps(result)
    print(line)
    if args.save:
        with open(args.save, "a") as handle:
            handle.write(line + "\n")


def items(results: Path, cohort, split: str) -> list[tuple[str, float]]:
    """(cache path, age) of a split's participants whose cache exists."""
    rows = cohort[cohort["split"] == split]
    out = []
    for eid, age in zip(rows["eid"], rows["age"]):
        path = results / paths.CACHE.format(eid=eid)
        if path.exists():
            out.append((str(path), float(age)))
    return out


def train_and_test(splits: dict, config_path: Path, overrides: list[str], out: Path) -> dict:
    config = yaml.safe_load(config_path.read_text())
    settings = {**config.get("train", {}), "seed": config.get("seed", 42)}
    changed = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)}
    settings.update(changed)
    start = time.perf_counter()
    summary = train(splits["train"], splits["val"], out, TrainConfig.from_dict(settings))
    seconds = time.perf_counter() - start
    test = splits["test"]
    predicted, _ = predict(out / "checkpoint.pt", [(Path(p).stem, p) for p, _ in test])
    return {
        "overrides": changed,
        "best_epoch": summary.get("best_epoch"),
        "seconds": round(seconds),
        **scores(predicted["predicted"].to_numpy(), splits),
    }


def ridge(splits: dict) -> dict:
    from sklearn.linear_model import RidgeCV

    def matrix(rows):
        return np.stack([np.nan_to_num(load_npy(p).astype(np.float32)).ravel() for p, _ in rows])

    fitted = splits["train"] + splits["val"]
    model = RidgeCV(alphas=np.logspace(-2, 6, 17)).fit(matrix(fitted), [a for _, a in fitted])
    predicted = model.predict(matrix(splits["test"]))
    return {"ridge_alpha": float(model.alpha_), **scores(predicted, splits, fitted)}


def scores(predicted: np.ndarray, splits: dict, fitted: list | None = None) -> dict:
    ages = np.array([a for _, a in splits["test"]])
    mean_age = np.mean([a for _, a in (fitted or splits["train"])])
    return {
        "n": [len(splits[s]) for s in ("train", "val", "test")],
        "test_mae": round(float(np.abs(predicted - ages).mean()), 3),
        "mean_predictor_mae": round(float(np.abs(mean_age - ages).mean()), 3),
        "correlation": round(float(np.corrcoef(predicted, ages)[0, 1]), 3),
        "prediction_sd": round(float(np.std(predicted)), 3),
    }


if __name__ == "__main__":
    main()
