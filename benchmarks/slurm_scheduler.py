"""Snakemake's main-process CPU on a real SLURM cluster, with the greedy and the ILP scheduler.

Runs the cut-down demo of tests/slurm/test_slurm_workflow.py (12 SYNTHETIC
participants in batches of about 4, GPU rules on the test node's fake GPU)
through the project's profile as `ageatlas install-profile` installs it, on
the one-node test cluster of tests/slurm/cluster.sh (root; started if it is
not up), once per scheduler. The harness collects Snakemake's resource
usage with wait4: its sbatch, squeue and scancel calls count, the SLURM
jobs do not (slurmd runs them). One JSON line per run.

    .venv/bin/python benchmarks/slurm_scheduler.py --save benchmarks/records/scheduler_cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "slurm"))

from slurm_harness import (  # noqa: E402
    make_test_profile,
    run_on_slurm,
    snapshot_code,
    start_cluster,
)
from test_slurm_workflow import MEM_DIVISOR, TARGETS, cut_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedulers", nargs="+", default=["greedy", "ilp"])
    parser.add_argument("--save", type=Path, help="append the JSON lines here")
    args = parser.parse_args()
    cluster = start_cluster()
    for scheduler in args.schedulers:
        with tempfile.TemporaryDirectory(prefix=f"slurm_{scheduler}_") as tmp:
            record = run(Path(tmp), cluster, scheduler)
        line = json.dumps(record)
        print(line, flush=True)
        if args.save:
            with open(args.save, "a") as handle:
                handle.write(line + "\n")


def run(root: Path, cluster, scheduler: str) -> dict:
    configfile = root / "config.yaml"
    configfile.write_text(yaml.safe_dump(cut_config()))
    snakefile, env = snapshot_code(root / "code")
    profile = make_test_profile(
        root / "profile", cluster, mem_divisor=MEM_DIVISOR, scheduler=scheduler
    )
    result = run_on_slurm(
        root / "work",
        snakefile,
        profile,
        *TARGETS,
        "--configfile",
        str(configfile),
        timeout=1500,
        env=env,
    )
    return {
        "label": f"cut-down demo (tests/slurm), one-node test cluster, --scheduler {scheduler}",
        "scheduler": scheduler,
        "returncode": result.returncode,
        "main_process_cpu_s": result.main_cpu_s,
        "wall_s": round(result.seconds, 1),
        "slurm_jobs": len(result.jobs()),
    }


if __name__ == "__main__":
    main()
