"""CPU seconds of Snakemake's own main process over a run: the scheduler's cost.

Runs ``snakemake`` in this process with the arguments given (after ``--``)
and, when it exits, prints the CPU time (user + system) of this process
alone: the jobs it ran as subprocesses are not counted, so what remains is
DAG building, scheduling passes, status checks and bookkeeping. Wall
seconds beside it. One JSON line on stdout, ``--save`` appends it to a file.

    .venv/bin/python benchmarks/scheduler_cpu.py --label "batches, greedy" -- \\
        --cores 2 --configfile config/demo.yaml --scheduler greedy
"""

from __future__ import annotations

import argparse
import atexit
import json
import resource
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="", help="what this run is, for the record")
    parser.add_argument("--save", help="append the JSON record to this file")
    parser.add_argument("snakemake_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    snakemake_args = [a for a in args.snakemake_args if a != "--"]
    start = time.perf_counter()

    def report() -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        record = {
            "label": args.label,
            "args": snakemake_args,
            "main_process_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "wall_s": round(time.perf_counter() - start, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        }
        line = json.dumps(record)
        print(line, flush=True)
        if args.save:
            with open(args.save, "a") as handle:
                handle.write(line + "\n")

    atexit.register(report)
    from snakemake.cli import main as snakemake_main

    sys.argv = ["snakemake", *snakemake_args]
    snakemake_main()


if __name__ == "__main__":
    main()
