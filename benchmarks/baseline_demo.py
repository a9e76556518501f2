"""Does the demo's 2.5D baseline learn? Test MAE and seconds of one training setting.

Reads a finished demo run (read only: its stitched volumes and cohort table),
projects every participant at the asked size into a scratch folder (once per
size), trains ageatlas.baseline.model.BaselineConfig with the workflow's own
trainer on the cohort's train split, validates on val, predicts test, and
prints one JSON line: test MAE of the model, of the mean predictor (the
training mean age) and the slope of predicted on true age, with the
training's wall-clock and CPU seconds. Settings not given are the demo's config/demo.yaml values
as the workflow would run them.

    nice .venv/bin/python benchmarks/baseline_demo.py --size 64 --epochs 5
    nice .venv/bin/python benchmarks/baseline_demo.py --size 64 --epochs 20 --lr 1e-3 --batch 8
    nice .venv/bin/python benchmarks/baseline_demo.py --size 64 --ridge

``--ridge`` fits a ridge regression on the projections' pixels instead (the
linear reference of benchmarks/demo_training.py): whether age can be read
from projections of that size at all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from ageatlas.age.predict import predict
from ageatlas.age.train import train
from ageatlas.baseline.model import BaselineConfig
from ageatlas.baseline.projection import ProjectionOptions, project_participant

ROOT = Path(__file__).resolve().parent.parent


def projections(results: Path, eids: list[str], size: int, scratch: Path) -> dict[str, str]:
    folder = scratch / f"projections_{size}"
    folder.mkdir(parents=True, exist_ok=True)
    options = ProjectionOptions(size=(size, size))
    paths = {}
    for eid in eids:
        path = folder / f"{eid}.npy"
        if not path.exists():
            project_participant(results / "ingest" / eid, eid, path, None, options)
        paths[eid] = str(path)
    return paths


def main() -> None:
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())["baseline"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "results" / "demo"))
    parser.add_argument("--scratch", default=str(ROOT / "benchmarks" / "runs" / "baseline_demo"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=demo["epochs"])
    parser.add_argument("--lr", type=float, default=demo.get("lr", 1e-4))
    parser.add_argument("--batch", type=int, default=demo["batch_size"])
    parser.add_argument("--hidden", type=int, default=demo["hidden"])
    parser.add_argument("--pool", type=int, default=demo["pool"])
    parser.add_argument("--max-shift", type=int, default=demo["max_shift"])
    parser.add_argument("--dropout", type=float, default=demo.get("dropout", 0.5))
    parser.add_argument("--patience", type=int, default=demo.get("plateau_patience", 3))
    parser.add_argument("--loss", default=demo.get("loss", "l1"))
    parser.add_argument("--seed", type=int, default=42, help="the trainer's seed")
    parser.add_argument(
        "--precise-bn",
        type=int,
        choices=(0, 1),
        default=int(demo.get("precise_bn", False)),
        help="recompute BatchNorm statistics on the training set each epoch",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ridge", action="store_true", help="the linear reference instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = Path(args.results)
    cohort = pd.read_csv(results / "cohort" / "cohort.tsv", sep="\t", dtype={"eid": str})
    paths = projections(results, list(cohort["eid"]), args.size, Path(args.scratch))

    def items(split):
        rows = cohort[cohort["split"] == split]
        return [(paths[eid], float(age)) for eid, age in zip(rows["eid"], rows["age"])]

    if args.ridge:
        from demo_training import ridge

        splits = {split: items(split) for split in ("train", "val", "test")}
        print(json.dumps({"size": args.size, "ridge": True, **ridge(splits)}), flush=True)
        return
    config = BaselineConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch,
        hidden=args.hidden,
        pool=args.pool,
        max_shift=args.max_shift,
        dropout=args.dropout,
        plateau_patience=args.patience,
        loss=args.loss,
        seed=args.seed,
        precise_bn=bool(args.precise_bn),
        num_workers=0,
    )
    out = Path(tempfile.mkdtemp(prefix="baseline_demo_"))
    try:
        started, cpu = time.perf_counter(), time.process_time()
        summary = train(items("train"), items("val"), out, config, device="cpu")
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        test = items("test")
        table, _ = predict(
            out / "checkpoint.pt",
            [(path, path) for path, _ in test],
            batch_size=args.batch,
            device="cpu",
            config_type=BaselineConfig,
        )
        metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    finally:
        shutil.rmtree(out)
    ages = np.array([age for _, age in test])
    predicted = table["predicted"].to_numpy()
    mean_age = np.mean([age for _, age in items("train")])
    record = {
        **{k: v for k, v in vars(args).items() if k not in ("results", "scratch")},
        "test_mae": round(float(np.abs(predicted - ages).mean()), 3),
        "mean_predictor_mae": round(float(np.abs(mean_age - ages).mean()), 3),
        "slope": round(float(np.polyfit(ages, predicted, 1)[0]), 3),
        "best_epoch": summary["best_epoch"],
        "best_val_mae": round(summary["best_val_mae"], 3),
        "train_mae_last": round(float(metrics["train_mae"].iloc[-1]), 3),
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),  # CPU time of the training: less sensitive to a busy machine
    }
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
