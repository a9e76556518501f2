"""Dry-run (DAG build) time and peak memory at cohort scale, against the bare engine.

For each cohort size this writes placeholder zips (empty files with real
names) and a phenotype table, then times ``snakemake -n`` of the ageatlas
workflow and, in the same run, of a toy Snakefile of the same shape (the
same per-participant and aggregate rules, trivial shell commands, subjects
from glob_wildcards). Peak memory is the child's max RSS.

    .venv/bin/python benchmarks/dag.py --sizes 3120 20000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

# Same shape as the workflow: per-participant stitch, phenotype QC over all
# zips, a QC checkpoint over all stitched folders.
TOY = """
EIDS, = glob_wildcards(config["zip_dir"] + "/{eid}_20201_2_0.zip")

rule all:
    input: "out/qc/participants.tsv"

rule stitch:
    input: config["zip_dir"] + "/{eid}_20201_2_0.zip"
    output: directory("out/stitched/{eid}")
    shell: "mkdir -p {output}"

rule phenotype_qc:
    input: config["phenotypes"], expand(config["zip_dir"] + "/{eid}_20201_2_0.zip", eid=EIDS)
    output: "out/qc/phenotypes.tsv"
    shell: "touch {output}"

checkpoint qc_table:
    input: "out/qc/phenotypes.tsv", expand("out/stitched/{eid}", eid=EIDS)
    output: "out/qc/participants.tsv"
    shell: "touch {output}"
"""


def make_cohort(root: Path, n: int) -> tuple[Path, Path]:
    zips = root / "zips"
    zips.mkdir()
    lines = ["eid,31-0.0,21003-2.0,21001-2.0"]
    for i in range(n):
        eid = 1000001 + i
        (zips / f"{eid}_20201_2_0.zip").touch()
        lines.append(f"{eid},{i % 2},{46 + i % 35},{20 + i % 15}")
    pheno = root / "phenotypes.csv"
    pheno.write_text("\n".join(lines) + "\n")
    return zips, pheno


def dry_run(args: list[str], workdir: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one snakemake -n in a fresh process."""
    probe = (
        "import resource, subprocess, sys, time;"
        "t = time.perf_counter();"
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
        "stderr=subprocess.PIPE, text=True);"
        "dt = time.perf_counter() - t;"
        "sys.stderr.write(r.stderr[-2000:] if r.returncode else '');"
        "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, r.returncode)"
    )
    cmd = [sys.executable, "-c", probe, SNAKEMAKE, "-n", "--cores", "1", *args]
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=True)
    seconds, mib, code = out.stdout.split()
    if code != "0":
        raise RuntimeError(f"snakemake {' '.join(args)} failed:\n{out.stderr}")
    return float(seconds), float(mib)


def measure(n: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"dag{n}_") as tmp:
        root = Path(tmp)
        zips, pheno = make_cohort(root, n)
        config = root / "config.yaml"
        config.write_text(
            f"results_dir: {root}/results\nlogs_dir: {root}/logs\nbenchmarks_dir: {root}/bench\n"
            f"cohort: {{source: ukbb, zip_dir: {zips}, phenotypes: {pheno}}}\n"
        )
        (root / "toy.smk").write_text(TOY)
        ours_args = ["--snakefile", str(REPO / "Snakefile"), "--configfile", str(config)]
        toy_args = [
            "--snakefile",
            str(root / "toy.smk"),
            "--config",
            f"zip_dir={zips}",
            f"phenotypes={pheno}",
        ]
        ours = min(dry_run(ours_args, root) for _ in range(repeats))
        toy = min(dry_run(toy_args, root) for _ in range(repeats))
    return {"n": n, "ours_s": ours[0], "ours_mib": ours[1], "toy_s": toy[0], "toy_mib": toy[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3120, 20000])
    parser.add_argument("--repeats", type=int, default=1, help="best of N runs each")
    args = parser.parse_args()
    print(f"snakemake -n, {os.cpu_count()} cores; best of {args.repeats}")
    print(
        f"{'participants':>12} {'ageatlas s':>11} {'MiB':>7} {'bare s':>8} {'MiB':>7} {'ratio':>6}"
    )
    for n in args.sizes:
        r = measure(n, args.repeats)
        print(
            f"{r['n']:>12} {r['ours_s']:>11.2f} {r['ours_mib']:>7.0f} {r['toy_s']:>8.2f} "
            f"{r['toy_mib']:>7.0f} {r['ours_s'] / r['toy_s']:>6.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
