"""Sizing for a cluster: CPU core-hours, GPU-hours and disk per stage, from the benchmarks' records.

Times come from records the benchmarks save with --save (default: the ones
in benchmarks/records/, which hold the figures in the README's "Measured",
and the GPU records benchmarks/gpu_check.sh leaves there, train-cuda.json
and explain-cuda.json, when it has run). GPU-hours come only from a record
measured on CUDA; without one a stage says "not measured". The work per
stage comes from the config (schema defaults filled in): split sizes,
epochs, the registration protocol, atlas members. The arithmetic is
cluster_sizing.

Disk is measured here, every run (a few seconds): one full-size SYNTHETIC
participant goes through the workflow's own code (ingest, preprocess,
projection; the Grad-CAM and warped maps are a random layer3-sized map,
ReLU'd and upsampled like Grad-CAM's, written with the workflow's writers; the
transform is an SVFFD of the configured stride saved with save_outcome), and
the files each rule writes per participant are summed, provenance sidecars
included. The same run times preprocess and projection (one core, in
process: the Python start-up of a job, about 0.4 s, is not included).

    nice .venv/bin/python benchmarks/sizing.py --markdown-out sizing.md
    .venv/bin/python benchmarks/sizing.py --train benchmarks/records/train-3d.json gpu-train.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cluster_sizing as sizing
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RECORDS = HERE / "records"
# What benchmarks/gpu_check.sh saves on a GPU; read by default once it exists.
GPU_RECORDS = {"train": RECORDS / "train-cuda.json", "explain": RECORDS / "explain-cuda.json"}


def main() -> None:
    args = parse_args()
    settings, ingest, trains, explains, disk = load_inputs(args)
    if args.save_disk:
        sizing.save_record(args.save_disk, disk)
    sources: dict = {}
    rate = sizing.rates(ingest, trains, explains, disk, settings, sources)
    table = sizing.markdown(settings, rate, disk["results"]["bytes"])
    print(table)
    for record in [ingest, *trains, *explains, disk]:
        print(
            f"- {record['benchmark']}: `{record['command']}` "
            f"({record['date']}, {record['machine']}; "
            f"{record['source']})"
        )
    if args.markdown_out:
        Path(args.markdown_out).write_text(table)
    if args.write_requests:
        write_requests(args.write_requests, rate, ingest, explains, sources)


def load_inputs(args: argparse.Namespace) -> tuple:
    """(settings, ingest, trains, explains, disk) from the arguments' config and records (disk
    measured now unless a record is given)."""
    config = load_config(args.configfile)
    settings = sizing.Settings.from_config(config, args.steps_per_level)
    disk = sizing.load_record(args.disk, "disk") if args.disk else measure_disk(config)
    ingest = sizing.load_record(args.ingest, "ingest")
    trains = [sizing.load_record(p, "train") for p in args.train]
    explains = [sizing.load_record(p, "explain") for p in args.explain]
    return settings, ingest, trains, explains, disk


def write_requests(path, rate: dict, ingest, explains: list[dict], sources: dict) -> None:
    """The batch rules' runtime and memory per participant (common.smk, batch_resources);
    sources: what rates() filled in."""
    requests = sizing.batch_requests(rate, ingest, explains, sources)
    Path(path).write_text(REQUESTS_HEADER + yaml.safe_dump(requests, sort_keys=False, width=100))


REQUESTS_HEADER = """\
# What each batch job asks SLURM for, per participant, from the benchmark records.
# Written by `.venv/bin/python benchmarks/sizing.py --disk benchmarks/records/disk.json
# --write-requests workflow/resources/batch_requests.yaml`: do not edit, rerun it (after
# benchmarks/gpu_check.sh on a GPU, its records replace the assumed GPU minutes).
# A batch job asks for runtime = 10 minutes of start-up + its participants' minutes:
# a CPU rule's pool of processes shares them (one process, one participant at a time),
# Grad-CAM on CPUs spreads them over the job's threads, a GPU does them in turn;
# mem_mb = mb_per_process x processes x resources.mem_scale. Both grow with each retry
# (x the attempt); runtime is at most resources.max_runtime.
# The margins are already in the figures (x time_margin, x memory_margin of the record).
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configfile", default=REPO / "config" / "config.yaml")
    parser.add_argument(
        "--ingest", default=RECORDS / "ingest.json", help="benchmarks/ingest.py --save record"
    )
    parser.add_argument(
        "--train",
        nargs="+",
        default=[RECORDS / "train-3d.json", RECORDS / "train-2.5d.json", *_gpu("train")],
        help="benchmarks/train.py --save records; a later one replaces an earlier one's rows",
    )
    parser.add_argument(
        "--explain",
        nargs="+",
        default=[RECORDS / "explain.json", *_gpu("explain")],
        help="benchmarks/explain.py --save records (one per device)",
    )
    parser.add_argument("--disk", help="a saved disk record instead of measuring disk now")
    parser.add_argument("--save-disk", help="write the disk record measured now here")
    parser.add_argument(
        "--steps-per-level",
        type=int,
        help=(
            "registration steps per pyramid level (default: registration.max_steps, an upper bound)"
        ),
    )
    parser.add_argument("--markdown-out", help="also write the table here")
    parser.add_argument(
        "--write-requests",
        help="write the batch rules' requests here (workflow/resources/batch_requests.yaml)",
    )
    return parser.parse_args(argv)


def _gpu(benchmark: str) -> list[Path]:
    path = GPU_RECORDS[benchmark]
    return [path] if path.exists() else []


def load_config(path) -> dict:
    """The config as the workflow sees it: validated, schema defaults filled in."""
    from snakemake.utils import validate

    config = yaml.safe_load(Path(path).read_text())
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return config


def measure_disk(config: dict) -> dict:
    """Bytes each per-participant output takes, written by the workflow's code for one SYNTHETIC
    participant."""
    with tempfile.TemporaryDirectory(prefix="sizing_") as tmp:
        files, seconds = write_outputs(Path(tmp), config)
        sizes = {
            key: {p.relative_to(tmp).as_posix(): p.stat().st_size for p in paths}
            for key, paths in files.items()
        }
    results = {
        "device_type": "cpu",
        "threads": 1,
        "grid": config["stitch"]["grid"]["shape"],
        "seconds": seconds,
        "bytes": {key: sum(f.values()) for key, f in sizes.items()},
        "files": sizes,
    }
    shape = "x".join(map(str, config["stitch"]["grid"]["shape"]))
    return sizing.make_record(
        "disk", results, data=f"one SYNTHETIC full-size participant, grid {shape}"
    )


def write_outputs(tmp: Path, config: dict) -> tuple[dict[str, list[Path]], dict[str, float]]:
    """The per-participant files of each rule (keys as in cluster_sizing.stages), and seconds of two
    steps."""
    import nibabel as nib
    import torch
    import torch.nn.functional as F
    from deepali import spatial

    from ageatlas.age import preprocess
    from ageatlas.baseline.projection import ProjectionOptions, project_participant
    from ageatlas.core import provenance
    from ageatlas.core.files import nifti_image, save_nifti
    from ageatlas.core.paths import stitched_path
    from ageatlas.explain import register as reg
    from ageatlas.explain import registration_settings
    from ageatlas.explain.atlas import warped_member
    from ageatlas.explain.gradcam import min_max
    from ageatlas.ingest.participant import ingest_participant, settings_from_config
    from ageatlas.synthetic.dicom import write_participant_zip
    from ageatlas.synthetic.participants import make_cohort

    person = make_cohort(1, seed=1)[0]
    eid = str(person.eid)
    zip_path = tmp / f"{eid}_20201_2_0.zip"
    write_participant_zip(zip_path, person, scale=1.0, seed=1)
    stitched = tmp / "stitched" / eid
    grid, options, preview = settings_from_config(config["stitch"])  # as the stitch rule does
    ingest_participant(eid, zip_path, stitched, grid, options, preview=preview)
    water_path = stitched_path(stitched, eid, "W")
    cache = tmp / "cache" / f"{eid}.npy"
    cache.parent.mkdir()
    prep = preprocess.prepare(
        water_path,
        cache,
        downsample_factor=config["preprocess"]["downsample"],
        background=config["preprocess"]["background"],
        seed=config["seed"],
    )
    projection = tmp / "projections" / f"{eid}.npy"
    projection.parent.mkdir()
    proj = project_participant(
        stitched,
        eid,
        projection,
        projection.with_suffix(".png"),
        ProjectionOptions.from_config(config["projection"]),
    )

    # Grad-CAM: r3d_18's layer3 is the input / (4, 8, 8), rounded up. A random map through
    # grad_cam's ReLU (half the cells zero), min-max and upsampling: gzip's ratio depends on the
    # values.
    water = nib.load(str(water_path))
    grid = tuple(int(s) for s in water.shape[:3])
    layer = [-(-g // f) for g, f in zip(grid, (4, 8, 8))]
    cam = min_max(torch.relu(torch.randn(layer, generator=torch.Generator().manual_seed(0))))
    cam = F.interpolate(cam[None, None], size=grid, mode="trilinear", align_corners=False)[
        0, 0
    ].numpy()
    gradcam = tmp / "gradcam" / f"{eid}.nii.gz"
    save_nifti(gradcam, nifti_image(cam, water.affine, reference=water))
    sidecar = lambda path, rule, inputs: provenance.write_sidecar(  # noqa: E731
        path, provenance.provenance(config, inputs, rule=rule, wildcards={"eid": eid})
    )
    sidecar(gradcam, "gradcam", [cache, stitched])

    # Registration to an atlas on the stitched grid (this participant stands in for it).
    settings = registration_settings.settings_from_config(config["registration"])
    image = reg.to_image(water, settings.clip, "cpu")
    svffd = spatial.StationaryVelocityFreeFormDeformation(
        image.grid(),
        stride=settings.stride_for(tuple(float(v) for v in image.grid().spacing())),
        steps=settings.scaling_squaring_steps,
    )
    svffd.data_(0.01 * torch.randn_like(svffd.data()))
    affine_only = reg.Registration(
        image.grid(), image.grid(), spatial.AffineTransform(image.grid()), None, settings
    )
    full = reg.Registration(image.grid(), image.grid(), affine_only.affine, svffd, settings)
    similarity = {"ncc": 0.9, "mse": 0.01}
    record = {
        "eid": eid,
        "group": "F_healthy",
        "status": "ok",
        "reasons": [],
        "before": similarity,
        "affine": similarity,
        "deformable": similarity,
        "deformable_steps": {"2": 1000, "1": 1000, "0": 1000},
        "folding_share": 0.0,
        "seconds": 30.0,
    }
    transform = tmp / "registration" / f"{eid}.pt"
    transform.parent.mkdir()
    reg.save_outcome(full, record, transform, transform.with_suffix(".json"))
    # The warp itself is affine-only here (cheap); the file has the same grid and dtype.
    warped = tmp / "warped" / f"{eid}.nii.gz"
    warped.parent.mkdir()
    nib.save(affine_only.warp(nib.load(str(gradcam)), order=1), warped)
    sidecar(warped, "warp_gradcam", [transform, gradcam])
    member = tmp / "atlas" / f"{eid}.nii.gz"
    member.parent.mkdir()
    nib.save(warped_member(affine_only, water, settings.clip), member)
    sidecar(member, "atlas_register", [stitched])

    files = {
        "zip": [zip_path],  # the input, not written by the workflow
        "stitched": sorted(p for p in stitched.iterdir()),
        "cache": [cache],
        "projection": [projection, projection.with_suffix(".png")],
        "gradcam": [gradcam, provenance.sidecar_path(gradcam)],
        "registration": [transform, transform.with_suffix(".json")],
        "warped": [warped, provenance.sidecar_path(warped)],
        # atlas_register writes a transform, its record and the warped water; a template is as large
        # as the latter.
        "atlas_member": [
            transform,
            transform.with_suffix(".json"),
            member,
            provenance.sidecar_path(member),
        ],
        "template": [member],
    }
    return files, {"preprocess": prep["seconds"], "projection": proj["seconds"]}


if __name__ == "__main__":
    main()
