"""Would BatchNorm statistics from part of the training set do (``train.precise_bn``)?

Precise BN recomputes every BatchNorm's running mean and variance on the
whole training set after each epoch, a forward pass over it that costs about
a fifth of the demo's 3D training. On a finished run's trained 3D model this
recomputes the statistics from all training batches (the last epoch's noise,
in a random order) and from k random batches of them, --repeats times for
each k, and prints one JSON line: the test MAE with each, and the largest
change of a test prediction against the full set's.

    PYTHONPATH=src .venv/bin/python benchmarks/precise_bn_subset.py --results results/demo \\
        --save benchmarks/records/precise_bn_subset_demo.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from demo_training import items

from ageatlas.age.model import load_trained
from ageatlas.age.train import batchnorm_statistics
from ageatlas.age.train_data import CacheDataset
from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="a finished run's results")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--save", type=Path, help="write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cohort = read_participant_tsv(args.results / paths.COHORT_TABLE)
    train, test = items(args.results, cohort, "train"), items(args.results, cohort, "test")
    model, meta = load_trained(args.results / paths.AGE_MODEL / "checkpoint.pt")
    config = meta["config"]
    seed, last_epoch = config.get("seed", 42), config.get("epochs", 1) - 1
    reads = CacheDataset(train, seed=seed)
    volumes = torch.stack([reads[(last_epoch, i)][0] for i in range(len(reads))])
    test_reads = CacheDataset(test, seed=seed)
    test_volumes = torch.stack([test_reads[i][0] for i in range(len(test_reads))])
    ages = np.array([age for _, age in test])
    rng = np.random.default_rng(0)
    size = args.batch_size

    def predictions(order: np.ndarray) -> np.ndarray:
        batches = [volumes[order[i : i + size]] for i in range(0, len(order), size)]
        batchnorm_statistics(model, batches)
        with torch.no_grad():
            return torch.cat([model(test_volumes[i : i + size]) for i in range(0, len(ages), size)])

    full = predictions(rng.permutation(len(volumes))).numpy()
    result = {
        "command": "benchmarks/precise_bn_subset.py --results " + str(args.results),
        "train": len(volumes),
        "test": len(ages),
        "batch_size": size,
        "test_mae_all_batches": round(float(np.abs(full - ages).mean()), 3),
    }
    for k in args.batches:
        maes, changes = [], []
        for _ in range(args.repeats):
            predicted = predictions(rng.permutation(len(volumes))[: k * size]).numpy()
            maes.append(round(float(np.abs(predicted - ages).mean()), 3))
            changes.append(round(float(np.abs(predicted - full).max()), 3))
        result[f"{k}_batches"] = {"test_mae": maes, "max_prediction_change": changes}
        print(k, result[f"{k}_batches"], flush=True)
    line = json.dumps(result)
    print(line)
    if args.save:
        args.save.write_text(line + "\n")


if __name__ == "__main__":
    main()
