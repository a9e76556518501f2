"""benchmarks/gpu_check.sh in its CPU mode (--small): it runs through, and what it saves are
records that benchmarks/sizing.py's arithmetic reads. About a minute on a 2-core CPU."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import cluster_sizing as sizing

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
GRID = (28, 22, 46)  # --small: the full grid at 1/8


def test_small_mode_writes_records_that_sizing_reads(tmp_path):
    run = subprocess.run(
        ["bash", str(SCRIPT), "--small", "--out", str(tmp_path)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "gpu_check: done" in run.stdout

    train = sizing.load_record(tmp_path / "train-small.json", "train")
    (row,) = train["results"]["rows"]
    assert (row["model"], row["device_type"], row["input"]) == ("3d", "cpu", "1x28x22x46")
    # The benchmark took the GPU's paths, on the CPU.
    assert row["precision"] == "bf16 autocast, channels_last, fused Adam"
    assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("training", "inference", "loading"))

    explain = sizing.load_record(tmp_path / "explain-small.json", "explain")
    results = explain["results"]
    assert results["device_type"] == "cpu" and results["gradcam"]["shape"] == list(GRID)
    assert results["gradcam"]["seconds"] > 0 and results["gradcam"]["peak_mib"] > 0
    registration = results["registration"]
    assert registration["seconds_per_affine_iteration"] > 0 and registration["warp_seconds"] > 0
    # A difference of two short runs' times: finite, its sign at the mercy of a busy machine.
    assert math.isfinite(registration["seconds_per_step_all_levels"])

    # Sizing turns them into per-unit rates at their own grid (and refuses the config's).
    settings = sizing.Settings(split_sizes={"train": 0.5, "val": 0.1, "test": 0.4}, grid=GRID)
    disk = {
        **explain,
        "benchmark": "disk",
        "results": {
            "threads": 1,
            "grid": list(GRID),
            "seconds": {"preprocess": 1, "projection": 1},
        },
    }
    rates = sizing.rates(None, [train], [explain], disk, settings)
    assert {"train3d", "infer3d", "gradcam", "registration", "warp"} <= set(rates["cpu"])
    assert rates["cuda"] == {}


def test_unknown_options_are_refused():
    run = subprocess.run(["bash", str(SCRIPT), "--smal"], capture_output=True, text=True)
    assert run.returncode == 2 and "unknown option --smal" in run.stderr
