"""Dry-run (DAG build) time, peak memory and planned jobs at cohort scale.

For each cohort size this writes placeholder zips (empty files with real
names) and a phenotype table, then times ``snakemake -n`` of the ageatlas
workflow twice: from nothing (the plan up to the QC checkpoint), and after
the checkpoint, with the stitch manifests and the QC and cohort tables
written as a finished run leaves them (the plan of everything after it).
Jobs per rule come from Snakemake's own job stats; SLURM jobs are those of
rules that are not local rules. ``--batch-sizes 1`` is the plan of one job
per participant (before batches); ``--toy`` adds a bare Snakefile of the
pre-checkpoint shape (trivial shell commands, subjects from glob_wildcards).
Peak memory is the child's max RSS.

    .venv/bin/python benchmarks/dag.py --sizes 3120 20000 100000 --toy
    .venv/bin/python benchmarks/dag.py --sizes 3120 --batch-sizes 1 400
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
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


def dry_run(args: list[str], workdir: Path) -> dict:
    """Wall seconds, peak RSS (MiB) and jobs per rule of one snakemake -n in a fresh process."""
    probe = (
        "import resource, subprocess, sys, time;"
        "t = time.perf_counter();"
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, "
        "stderr=subprocess.STDOUT, text=True);"
        "dt = time.perf_counter() - t;"
        "sys.stderr.write(r.stdout);"
        "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, r.returncode)"
    )
    cmd = [sys.executable, "-c", probe, SNAKEMAKE, "-n", "--cores", "1", *args]
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=True)
    seconds, mib, code = out.stdout.split()
    if code != "0":
        raise RuntimeError(f"snakemake {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return {"s": float(seconds), "mib": float(mib), "jobs": job_stats(out.stderr)}


def job_stats(log: str) -> dict[str, int]:
    """Snakemake's "Job stats" table (rule -> planned jobs), without the total."""
    counts: dict[str, int] = {}
    lines = log.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("Job stats"))
    except StopIteration:
        return counts
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        if parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def local_rules() -> set[str]:
    """Rules the workflow runs in the main process (no SLURM job): its localrules and `all`."""
    text = (REPO / "Snakefile").read_text()
    block = text.split("localrules:", 1)[1].split("\n\n", 1)[0] if "localrules:" in text else ""
    return {name.strip(" ,") for name in block.split() if name.strip(" ,")} | {"all"}


def slurm_jobs(jobs: dict[str, int]) -> int:
    local = local_rules()
    return sum(n for rule, n in jobs.items() if rule not in local)


def finish_qc(root: Path, zips: Path, n: int) -> None:
    """The state after the QC checkpoint, as a finished run leaves it: the stitch manifests, the
    QC and cohort tables (every participant passes; paper-like split, six groups), newer than the
    zips, so `snakemake -n` plans everything after the checkpoints."""
    from ageatlas.core.batches import batch_count, plan

    eids = [str(1000001 + i) for i in range(n)]
    results = root / "results"
    for name, members in plan(eids, batch_count(n, BATCH_SIZE[0])).items():
        manifest = results / "ingest" / "batches" / "stitch" / f"{name}.tsv"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        rows = "".join(f"{eid}\tdone\t1.0\t\t\n" for eid in members)
        manifest.write_text("eid\tstatus\tseconds\terror\tlog\n" + rows)
    cohort = results / "cohort"
    cohort.mkdir(parents=True, exist_ok=True)
    (cohort / "phenotype_qc.tsv").write_text("eid\tstage\tstatus\treasons\n")
    (cohort / "participant_qc.tsv").write_text(
        "eid\tstatus\treasons\n" + "".join(f"{eid}\tok\t\n" for eid in eids)
    )
    splits = ["train"] * 49 + ["val"] * 12 + ["test"] * 38 + ["unused"]
    bands = ["lt60", "60to70", "ge70"]
    lines = ["eid\tage\tsex\tbmi\tbmi_group\tgroup\tage_band\tsplit"]
    for i, eid in enumerate(eids):
        sex, bmi = "FM"[i % 2], ["healthy", "overweight", "obese"][(i // 2) % 3]
        lines.append(
            f"{eid}\t{46 + i % 35}\t{sex}\t{22 + 5 * ((i // 2) % 3)}\t{bmi}\t{sex}_{bmi}\t"
            f"{bands[(i // 6) % 3]}\t{splits[(i * 37) % 100]}"
        )
    (cohort / "cohort.tsv").write_text("\n".join(lines) + "\n")
    later = time.time() + 5
    for path in results.rglob("*"):
        os.utime(path, (later, later))


BATCH_SIZE = [400]


def measure(n: int, size: int, after_qc: bool, toy: bool) -> dict:
    BATCH_SIZE[0] = size
    with tempfile.TemporaryDirectory(prefix=f"dag{n}_") as tmp:
        root = Path(tmp)
        zips, pheno = make_cohort(root, n)
        config = root / "config.yaml"
        config.write_text(
            f"results_dir: {root}/results\nlogs_dir: {root}/logs\nbenchmarks_dir: {root}/bench\n"
            f"cohort: {{source: ukbb, zip_dir: {zips}, phenotypes: {pheno}}}\n"
            f"batch: {{size: {size}}}\n"
        )
        (root / "toy.smk").write_text(TOY)
        ours_args = ["--snakefile", str(REPO / "Snakefile"), "--configfile", str(config)]
        result = {"n": n, "size": size, "fresh": dry_run(ours_args, root)}
        if toy:
            toy_args = ["--snakefile", str(root / "toy.smk"), "--config", f"zip_dir={zips}"]
            result["toy"] = dry_run([*toy_args, f"phenotypes={pheno}"], root)
        if after_qc:
            finish_qc(root, zips, n)
            result["after_qc"] = dry_run(ours_args, root)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3120, 20000])
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[400], help="config batch.size (1: per job)"
    )
    parser.add_argument("--no-after-qc", action="store_true", help="skip the post-QC plan")
    parser.add_argument("--toy", action="store_true", help="also the bare engine's toy")
    args = parser.parse_args()
    print(f"snakemake -n, {os.cpu_count()} cores; local rules: {sorted(local_rules())}")
    header = "participants batch  to-QC s    MiB  jobs | whole run s    MiB  jobs  SLURM jobs"
    print(header + ("  | toy s   MiB  jobs" if args.toy else ""))
    for n in args.sizes:
        for size in args.batch_sizes:
            r = measure(n, size, not args.no_after_qc, args.toy)
            fresh, line = r["fresh"], f"{n:>12} {size:>5} "
            line += f"{fresh['s']:>8.2f} {fresh['mib']:>6.0f} {sum(fresh['jobs'].values()):>5} |"
            if "after_qc" in r:
                after = r["after_qc"]
                jobs = after["jobs"]
                whole = {**fresh["jobs"], **jobs}  # the run's jobs: up to QC, then the rest
                line += (
                    f" {after['s']:>11.2f} {after['mib']:>6.0f} {sum(jobs.values()):>5}"
                    f" {slurm_jobs(whole):>11}"
                )
            if "toy" in r:
                toy = r["toy"]
                line += f"  | {toy['s']:>5.2f} {toy['mib']:>5.0f} {sum(toy['jobs'].values()):>5}"
            print(line, flush=True)
            if "after_qc" in r:
                print("    per rule:", dict(sorted(whole.items())), flush=True)


if __name__ == "__main__":
    main()
