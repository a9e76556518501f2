"""What ``train.init_output_bias`` changes: the run's age model retrained with the other setting.

Retrains the 3D model of a finished run on its own caches and split with the
run's training settings, flipping only ``init_output_bias`` (start the output
bias at the training mean age, or at 0 as the authors did), and reports both
models' validation and test MAE. The checkpoint it writes can then be scored
by benchmarks/attribution.py --checkpoint, beside the run's own model.

    .venv/bin/python benchmarks/output_bias.py --results results/demo --config config/demo.yaml \
        --out benchmarks/runs/output_bias
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from ageatlas.age.model import load_trained
from ageatlas.age.preprocess import model_input
from ageatlas.age.train import train
from ageatlas.age.train_config import TrainConfig
from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import paths
from ageatlas.core.files import load_npy


def mae(checkpoint: Path, rows, seed: int) -> float:
    model, _ = load_trained(checkpoint, "cpu")
    errors = []
    with torch.no_grad():
        for path, age in rows:
            volume = torch.from_numpy(model_input(load_npy(path), path, seed))[None, None]
            errors.append(abs(float(model(volume)[0]) - age))
    return float(np.mean(errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    own = args.results / paths.AGE_MODEL / "checkpoint.pt"
    state = torch.load(own, map_location="cpu", weights_only=True)
    settings = dict(state["config"])
    flipped = {**settings, "init_output_bias": not settings["init_output_bias"]}
    cohort = read_participant_tsv(args.results / paths.COHORT_TABLE)
    cache = str(args.results / paths.CACHE)
    rows = {
        split: [(cache.format(eid=e), float(a)) for e, a in zip(part["eid"], part["age"])]
        for split, part in cohort.groupby("split")
    }
    start = time.perf_counter()
    train(rows["train"], rows["val"], args.out, TrainConfig.from_dict(flipped), device="cpu")
    seconds = time.perf_counter() - start
    seed = int(settings.get("seed", config.get("seed", 0)))
    print(f"retrained in {seconds:.0f} s; checkpoint {args.out / 'checkpoint.pt'}")
    print("| init_output_bias | validation MAE | test MAE |")
    print("|---|---|---|")
    for flag, checkpoint in (
        (settings["init_output_bias"], own),
        (flipped["init_output_bias"], args.out / "checkpoint.pt"),
    ):
        print(
            f"| {flag} | {mae(checkpoint, rows['val'], seed):.2f} "
            f"| {mae(checkpoint, rows['test'], seed):.2f} |"
        )


if __name__ == "__main__":
    main()
