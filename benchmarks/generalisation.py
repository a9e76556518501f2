"""Does a finished run's 3D age model generalise, or memorise its training set?

Training keeps two sets of weights in age/model/state.pt: the best
validation epoch's (what checkpoint.pt holds and the maps use) and the last
epoch's. Both are evaluated on the train and validation inputs as the
workflow reads them for evaluation (background noise fixed per
participant): MAE, the spread of the predictions and their correlation with
age, in eval mode (BatchNorm's running statistics, as validation and the
maps run) and in train mode (batch statistics over batches of the training
batch size, as training saw them). A last epoch that fits the training set
but not the validation set in both modes is overfitting, not a BatchNorm
mismatch; a best epoch whose predictions barely spread predicts the mean
age, and its maps show no learned age.

    .venv/bin/python benchmarks/generalisation.py --results results/demo \
        --save benchmarks/records/generalisation_demo.tsv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ageatlas.age.model import AgeRegressor
from ageatlas.age.preprocess import model_input
from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import paths
from ageatlas.core.files import load_npy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    model_dir = args.results / paths.AGE_MODEL
    state = torch.load(model_dir / "state.pt", map_location="cpu", weights_only=False)
    meta = torch.load(model_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    hidden, seed = int(meta["config"]["hidden"]), int(meta["config"].get("seed", 0))
    batch = int(meta["config"].get("batch_size", 8))
    cohort = read_participant_tsv(args.results / paths.COHORT_TABLE)
    cache = str(args.results / paths.CACHE)
    rows = []
    weights_and_modes = [
        (weights, mode) for weights in ("best_model", "model") for mode in ("eval", "train")
    ]
    for weights, mode in weights_and_modes:
        for split in ("train", "val"):
            model = AgeRegressor(hidden)  # afresh: train mode updates the running statistics
            model.load_state_dict(state[weights])
            model.train(mode == "train")
            members = cohort[cohort["split"] == split]
            ages = members["age"].to_numpy(dtype=float)
            predicted = predict(model, members["eid"], cache, seed, batch if mode == "train" else 1)
            rows.append(
                {
                    "weights": "best" if weights == "best_model" else "last",
                    "epoch": state["best_epoch"] if weights == "best_model" else state["epoch"],
                    "mode": mode,
                    "split": split,
                    "n": len(ages),
                    "mae": np.mean(np.abs(predicted - ages)),
                    "mean_predictor_mae": np.mean(
                        np.abs(ages - cohort.loc[cohort["split"] == "train", "age"].mean())
                    ),
                    "prediction_sd": np.std(predicted, ddof=1),
                    "correlation": np.corrcoef(predicted, ages)[0, 1],
                }
            )
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".2f"))
    if args.save:
        table.to_csv(args.save, sep="\t", index=False, float_format="%.3f")


def predict(model, eids, cache: str, seed: int, batch: int) -> np.ndarray:
    """Predicted ages from the cached inputs, `batch` participants a forward pass."""
    eids = list(eids)
    predicted = []
    for start in range(0, len(eids), batch):
        volumes = [
            torch.from_numpy(model_input(load_npy(cache.format(eid=eid)), eid, seed))
            for eid in eids[start : start + batch]
        ]
        with torch.no_grad():
            predicted.extend(model(torch.stack(volumes)[:, None]).reshape(-1).tolist())
    return np.array(predicted)


if __name__ == "__main__":
    main()
