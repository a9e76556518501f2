"""Zip to stitched NIfTI per participant at full UK Biobank size, against dcm2niix.

Writes one full-size SYNTHETIC field-20201 zip (24 series, 1,328 DICOM
slices), then, each in a fresh process pinned to one core:
  - ageatlas: read the zip in memory, stitch W and F onto 224 x 174 x 370,
    write two .nii.gz (what the workflow's stitch job does);
  - dcm2niix: convert the same DICOMs (extracted to disk first, timed
    apart) to one NIfTI per series, stations only, no stitching.
Seconds are the best of --repeats; memory is the process's peak RSS.
--save writes the figures as a record for benchmarks/sizing.py.

    .venv/bin/python benchmarks/ingest.py [--save benchmarks/records/ingest.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ONE_CORE = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

INGEST = """
import json, resource, sys, time
from ageatlas.ingest.participant import ingest_participant
from ageatlas.ingest.grid import Grid
from ageatlas.ingest.stitch import StitchOptions
t = time.perf_counter()
rec = ingest_participant(
    "1000001", sys.argv[1], sys.argv[2], Grid(), StitchOptions(), preview=False
)
dt = time.perf_counter() - t
print(json.dumps({
    "s": dt,
    "mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "status": rec.status,
}))
"""

TIMED = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
dt = time.perf_counter() - t
print(json.dumps({"s": dt, "mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def pinned(cmd: list[str]) -> list[str]:
    return (["taskset", "-c", "0"] if shutil.which("taskset") else []) + cmd


def run_json(cmd: list[str]) -> dict:
    out = subprocess.run(pinned(cmd), capture_output=True, text=True, env=os.environ | ONE_CORE)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["s"]) | {"mib": max(r["mib"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--save", help="write the figures here as JSON (a record for benchmarks/sizing.py)"
    )
    args = parser.parse_args()
    dcm2niix = shutil.which("dcm2niix") or str(Path(sys.executable).with_name("dcm2niix"))
    with tempfile.TemporaryDirectory(prefix="ingest_bench_") as tmp:
        tmp = Path(tmp)
        from ageatlas.synthetic.dicom import write_participant_zip
        from ageatlas.synthetic.participants import make_cohort

        person = make_cohort(1, seed=1)[0]
        zip_path = tmp / f"{person.eid}_20201_2_0.zip"
        write_participant_zip(zip_path, person, scale=1.0, seed=1)
        with zipfile.ZipFile(zip_path) as zf:
            members, raw = len(zf.infolist()), sum(i.file_size for i in zf.infolist())
        zipped = zip_path.stat().st_size
        print(
            f"SYNTHETIC full-size zip: {members} members, {raw / 2**20:.0f} MiB DICOM, "
            f"{zipped / 2**20:.0f} MiB zipped; one core, best of {args.repeats}"
        )

        ours = best(
            [
                run_json([sys.executable, "-c", INGEST, str(zip_path), str(tmp / f"out{i}")])
                for i in range(args.repeats)
            ]
        )
        assert ours["status"] != "excluded", ours
        unzip = best(
            [
                run_json(
                    [
                        sys.executable,
                        "-c",
                        TIMED,
                        "unzip",
                        "-q",
                        "-o",
                        str(zip_path),
                        "-d",
                        str(tmp / "dcm"),
                    ]
                )
                for _ in range(args.repeats)
            ]
        )
        conv = {}
        for gz in ("y", "n"):
            runs = []
            for i in range(args.repeats):
                out = tmp / f"nii_{gz}{i}"
                out.mkdir()
                runs.append(
                    run_json(
                        [
                            sys.executable,
                            "-c",
                            TIMED,
                            dcm2niix,
                            "-z",
                            gz,
                            "-o",
                            str(out),
                            str(tmp / "dcm"),
                        ]
                    )
                )
            conv[gz] = best(runs)

    print(f"{'step':<58} {'seconds':>8} {'peak MiB':>9}")
    print(
        f"{'ageatlas: zip -> stitched W+F .nii.gz (224x174x370)':<58} {ours['s']:>8.2f} "
        f"{ours['mib']:>9.0f}"
    )
    print(f"{'unzip to disk (needed by dcm2niix)':<58} {unzip['s']:>8.2f} {unzip['mib']:>9.0f}")
    print(
        f"{'dcm2niix -z y: 24 series -> .nii.gz, no stitching':<58} {conv['y']['s']:>8.2f} "
        f"{conv['y']['mib']:>9.0f}"
    )
    print(
        f"{'dcm2niix -z n: 24 series -> .nii, no stitching':<58} {conv['n']['s']:>8.2f} "
        f"{conv['n']['mib']:>9.0f}"
    )
    if args.save:
        import cluster_sizing as sizing

        runs = {"ageatlas": ours, "unzip": unzip, "dcm2niix_gz": conv["y"], "dcm2niix": conv["n"]}
        steps = {name: {"seconds": r["s"], "peak_mib": r["mib"]} for name, r in runs.items()}
        results = {
            "device_type": "cpu",
            "threads": 1,
            "repeats": args.repeats,
            "steps": steps,
            "zip": {"members": members, "dicom_mib": raw / 2**20, "zip_mib": zipped / 2**20},
        }
        sizing.save_record(
            args.save, sizing.make_record("ingest", results, data="one full-size SYNTHETIC zip")
        )


if __name__ == "__main__":
    main()
