"""Grad-CAM and registration seconds and peak memory per participant at the full grid.

Two SYNTHETIC full-size participants (field-20201 zips at scale 1, stitched
to 224 x 174 x 370 at 2.232 x 2.232 x 3 mm like the workflow does). Each
part runs in a fresh process so its peak memory is its own (--parts: the
standing two, both by default; none with --methods times only those):

  gradcam       one Grad-CAM map (ageatlas.explain.gradcam.grad_cam, layer3) of the
                age model on the full-size input, after one warm-up call
  --methods     the other attribution methods the same way (method:layer, e.g.
                hirescam:layer2); integrated_gradients:input runs --ig-steps
                steps one volume at a time and reports seconds per step and
                for the workflow's 32 (the one forward pass of the volume and its
                reference that precedes the steps is timed on its own and counted
                once); occlusion:input times --occlusion-evals forward
                passes of --occlusion-batch perturbed volumes (the workflow's
                perturbations_per_eval) and reports seconds per volume and, from the
                number of --block cubes, per participant (a whole occlusion map at the
                full grid is days on a CPU)
  registration  participant B to participant A (the atlas stand-in) with the
                authors' settings (ageatlas.explain.register: affine 200 iterations,
                SVFFD on 3 levels, LNCC 7, up to 1000 steps a level, stop when
                the loss stops falling), plus warping one map

On a GPU the registration runs the whole protocol. On a CPU that would take
hours, so it runs --cpu-affine affine iterations and --cpu-steps steps per
level, reports seconds per affine iteration and per deformable step on each
level, and the per-participant time those rates give for the protocol's
iteration counts at 100 and at 1000 steps a level (the bounds of the
convergence stop), and warps one map with the short run's transform.
Peak memory: CUDA max allocated, or the process's peak RSS.
Goal on an H100: Grad-CAM plus registration <= 30 s per participant.
--save writes the figures as a record for benchmarks/sizing.py.

    .venv/bin/python benchmarks/explain.py            # the GPU if there is one, else the CPU
    .venv/bin/python benchmarks/explain.py --device cpu --save explain-cpu.json

--scale writes and stitches the participants at a fraction of the matrix
(the demo's 0.25; benchmarks/gpu_check.sh --small uses 0.125): a check that
the benchmark runs, not a figure for sizing, which refuses other grids.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

GOAL_H100_S = 30.0


def main() -> None:
    args = parse_args()
    if args.part:
        print(json.dumps(measure(args)))
        return
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="explain_bench_") as tmp:
        waters = make_participants(Path(tmp), args.scale)
        results = {part: run_part(part, device, waters, args) for part in args.parts}
        for spec in args.methods:
            results[spec] = run_part("attribution", device, waters, args, spec)
    print_table(device, results, args)
    if args.save:
        import cluster_sizing as sizing

        results = {
            "device_type": device,
            "device": device_name(device),
            "threads": torch.get_num_threads(),
            **results,
        }
        size = "full-size" if args.scale == 1 else f"scale {args.scale:g}"
        record = sizing.make_record("explain", results, data=f"two SYNTHETIC {size} participants")
        sizing.save_record(args.save, record)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"])
    parser.add_argument(
        "--parts",
        nargs="*",
        choices=["gradcam", "registration"],
        default=["gradcam", "registration"],
        help="the standing parts to run (none: only --methods)",
    )
    parser.add_argument(
        "--cpu-affine", type=int, default=5, help="affine iterations timed on a CPU"
    )
    parser.add_argument(
        "--cpu-steps", type=int, default=3, help="deformable steps timed per level on a CPU"
    )
    parser.add_argument(
        "--save", help="write the figures here as JSON (a record for benchmarks/sizing.py)"
    )
    parser.add_argument(
        "--methods", nargs="*", default=[], help="more attribution methods, as method:layer"
    )
    parser.add_argument("--ig-steps", type=int, default=32, help="integrated gradients' steps")
    parser.add_argument("--block", type=int, default=4, help="occlusion's cube edge, voxels")
    parser.add_argument(
        "--occlusion-batch", type=int, default=4, help="perturbed volumes per forward pass"
    )
    parser.add_argument(
        "--occlusion-evals", type=int, default=2, help="forward passes timed for occlusion"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="fraction of the full matrix (default 1)"
    )
    parser.add_argument(
        "--part", choices=["gradcam", "registration", "attribution"], help=argparse.SUPPRESS
    )
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--moving", help=argparse.SUPPRESS)
    parser.add_argument("--fixed", help=argparse.SUPPRESS)
    return parser.parse_args()


def make_participants(tmp: Path, scale: float = 1.0) -> list[str]:
    """Two SYNTHETIC participants stitched to the default grid (scaled); their water paths."""
    from ageatlas.core.paths import stitched_path
    from ageatlas.ingest.grid import Grid
    from ageatlas.ingest.participant import ingest_participant
    from ageatlas.ingest.stitch import StitchOptions
    from ageatlas.synthetic.dicom import write_participant_zip
    from ageatlas.synthetic.participants import make_cohort

    full = Grid()
    grid = Grid(
        shape=tuple(round(n * scale) for n in full.shape),
        spacing=tuple(mm / scale for mm in full.spacing),
    )
    waters = []
    for person in make_cohort(2, seed=7):
        zip_path = tmp / f"{person.eid}.zip"
        write_participant_zip(zip_path, person, scale=scale, seed=7)
        out = tmp / str(person.eid)
        record = ingest_participant(
            str(person.eid), zip_path, out, grid, StitchOptions(), preview=False
        )
        if not record.passed:
            raise RuntimeError(
                f"synthetic participant {person.eid} failed ingest: {record.reasons}"
            )
        waters.append(str(stitched_path(out, str(person.eid), "W")))
    return waters


def run_part(part: str, device: str, waters: list[str], args, spec: str = "") -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--part",
        part,
        "--device",
        device,
        "--moving",
        waters[1],
        "--fixed",
        waters[0],
        "--cpu-affine",
        str(args.cpu_affine),
        "--cpu-steps",
        str(args.cpu_steps),
        "--ig-steps",
        str(args.ig_steps),
        "--block",
        str(args.block),
        "--occlusion-batch",
        str(args.occlusion_batch),
        "--occlusion-evals",
        str(args.occlusion_evals),
        "--spec",
        spec,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = {
        "gradcam": measure_gradcam,
        "attribution": measure_attribution,
        "registration": measure_registration,
    }[args.part](args, device)
    result["peak_mib"] = peak_mib(device)
    return result


def peak_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_gradcam(args, device) -> dict:
    import nibabel as nib

    from ageatlas.age.model import build_model
    from ageatlas.age.preprocess import normalise
    from ageatlas.explain.gradcam import grad_cam

    water = np.asarray(nib.load(args.moving).dataobj, dtype=np.float32)
    volume = torch.from_numpy(normalise(water, "zero"))[None, None].to(device)
    model = build_model().to(device).eval()
    grad_cam(model, volume, model.backbone.layer3)  # warm-up: allocator, cuDNN plans
    _sync(device)
    start = time.perf_counter()
    grad_cam(model, volume, model.backbone.layer3)
    _sync(device)
    return {"seconds": time.perf_counter() - start, "shape": list(water.shape)}


def measure_attribution(args, device) -> dict:
    """One map of another method (--spec method:layer) on the full-size input, after a warm-up."""
    import nibabel as nib

    from ageatlas.age.model import build_model
    from ageatlas.age.preprocess import normalise
    from ageatlas.explain.gradcam import grad_cam
    from ageatlas.explain.reference_attribution import attribute_against_reference

    method, layer = args.spec.split(":")
    water = np.asarray(nib.load(args.moving).dataobj, dtype=np.float32)
    volume = torch.from_numpy(normalise(water, "zero"))[None, None].to(device)
    model = build_model().to(device).eval()
    if method == "occlusion":
        return measure_occlusion(args, device, model, volume)
    if method == "integrated_gradients":
        reference = torch.zeros_like(volume)  # the mean training volume's stand-in: same cost

        def run():
            attribute_against_reference(
                model, volume, reference, method, steps=args.ig_steps, batch=1
            )

        def fixed():  # what attribute_against_reference runs once before the steps
            with torch.no_grad():
                model(torch.cat([volume, reference]))
    else:

        def run():
            grad_cam(model, volume, getattr(model.backbone, layer), method=method)

    run()  # warm-up
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "shape": list(water.shape)}
    if method == "integrated_gradients":
        start = time.perf_counter()
        fixed()
        _sync(device)
        once = time.perf_counter() - start
        per_step = (seconds - once) / args.ig_steps
        result["seconds_forward_once"] = once
        result["seconds_per_step"] = per_step
        result["seconds_32_steps"] = once + 32 * per_step
    return result


def measure_occlusion(args, device, model, volume) -> dict:
    """Occlusion's cost from its forward passes: captum evaluates the model once per --block cube
    (strides = window, as ageatlas.explain.reference_attribution does), --occlusion-batch perturbed
    volumes at a time, without gradients; the whole map is that many passes, which at the full
    grid is too long to run, so --occlusion-evals passes are timed and multiplied out."""
    shape = tuple(volume.shape[2:])
    blocks = int(np.prod([n // args.block for n in shape]))
    batch = volume.expand(args.occlusion_batch, *volume.shape[1:]).clone()

    def run():
        with torch.no_grad():
            model(batch)

    run()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.occlusion_evals):
        run()
    _sync(device)
    per_volume = (time.perf_counter() - start) / (args.occlusion_evals * args.occlusion_batch)
    return {
        "seconds": per_volume * (blocks + 1),  # + the unperturbed pass
        "seconds_per_volume": per_volume,
        "blocks": blocks,
        "block": args.block,
        "batch": args.occlusion_batch,
        "shape": list(shape),
    }


def measure_registration(args, device) -> dict:
    import nibabel as nib

    from ageatlas.explain import register as reg
    from ageatlas.explain import registration_settings

    moving, fixed = nib.load(args.moving), nib.load(args.fixed)
    full = registration_settings.RegistrationSettings()
    if device.type == "cuda":
        result = reg.register(moving, fixed, full, device=device)
        start = time.perf_counter()
        result.warp(nib.Nifti1Image(np.asarray(moving.dataobj, np.float32), moving.affine))
        _sync(device)
        warp_seconds = time.perf_counter() - start
        return {
            "seconds": result.metrics["seconds"],
            "warp_seconds": warp_seconds,
            "pull_back_seconds": pull_back_seconds(result, fixed, device),
            "steps": result.metrics["deformable_steps"],
            "ncc": {k: result.metrics[k]["ncc"] for k in ("before", "affine", "deformable")},
        }
    return cpu_rates(moving, fixed, full, args, device)


def cpu_rates(moving, fixed, full, args, device) -> dict:
    """Seconds per affine iteration and per deformable step on each level, from short runs."""
    import nibabel as nib

    from ageatlas.explain import register as reg
    from ageatlas.explain import registration_settings

    timed = {}
    for affine_iterations, steps in ((0, 1), (args.cpu_affine, 1 + args.cpu_steps)):
        settings = registration_settings.RegistrationSettings(
            affine_iterations=affine_iterations, max_steps=steps, min_delta=0.0, patience=10**6
        )
        start = time.perf_counter()
        result = reg.register(moving, fixed, settings, device=device)
        timed[affine_iterations] = time.perf_counter() - start
    # A warp costs the same whatever the steps were: the short run's transform is as good a timer.
    start = time.perf_counter()
    result.warp(nib.Nifti1Image(np.asarray(moving.dataobj, np.float32), moving.affine))
    warp_seconds = time.perf_counter() - start
    pull_back = pull_back_seconds(result, fixed, device)
    # The difference of the two runs is cpu_affine affine iterations + cpu_steps steps on every
    # level.
    per_affine = _per_affine(moving, fixed, args, device)
    per_step_all_levels = (
        timed[args.cpu_affine] - timed[0] - per_affine * args.cpu_affine
    ) / args.cpu_steps
    protocol = {
        steps: full.affine_iterations * per_affine + steps * per_step_all_levels
        for steps in (100, 1000)
    }
    return {
        "seconds_per_affine_iteration": per_affine,
        "seconds_per_step_all_levels": per_step_all_levels,
        "protocol_seconds_100_steps": protocol[100],
        "protocol_seconds_1000_steps": protocol[1000],
        "warp_seconds": warp_seconds,
        "pull_back_seconds": pull_back,
    }


def pull_back_seconds(result, fixed, device) -> float:
    """Seconds to bring the atlas into the participant's body (gradcam.reference: group_atlas)."""
    import nibabel as nib

    atlas = nib.Nifti1Image(np.asarray(fixed.dataobj, np.float32), fixed.affine)
    start = time.perf_counter()
    result.pull_back(atlas)
    _sync(device)
    return time.perf_counter() - start


def _per_affine(moving, fixed, args, device) -> float:
    from ageatlas.explain import register as reg
    from ageatlas.explain import registration_settings

    times = []
    for iterations in (1, 1 + args.cpu_affine):
        settings = registration_settings.RegistrationSettings(affine_iterations=iterations)
        moving_img = reg.to_image(moving, settings.clip, device)
        fixed_img = reg.to_image(fixed, settings.clip, device)
        start = time.perf_counter()
        reg._fit_affine(moving_img, fixed_img, settings)
        times.append(time.perf_counter() - start)
    return (times[1] - times[0]) / args.cpu_affine


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "CPU"


def print_table(device: str, results: dict, args) -> None:
    name = device_name(device)
    threads = torch.get_num_threads()
    shape = next((r["shape"] for r in results.values() if "shape" in r), None)
    print(f"SYNTHETIC participants, grid {shape}, device {name} ({threads} CPU threads)")
    gradcam = results.get("gradcam")
    if gradcam:
        print(
            f"{'Grad-CAM (layer3), one participant':<52} {gradcam['seconds']:>9.2f} s "
            f"{gradcam['peak_mib']:>8.0f} MiB"
        )
    for spec in args.methods:
        timing = results[spec]
        seconds = timing.get("seconds_32_steps", timing["seconds"])
        label = f"{spec}, one participant" + (" (32 steps)" if "seconds_32_steps" in timing else "")
        if "blocks" in timing:
            label = f"{spec}, one participant ({timing['blocks']:,} cubes, extrapolated)"
        print(f"{label:<52} {seconds:>9.2f} s {timing['peak_mib']:>8.0f} MiB")
    registration = results.get("registration")
    if not registration:
        return
    pull_back = registration.get("pull_back_seconds", float("nan"))  # older records lack it
    if device == "cuda":
        print(
            f"{'registration, authors protocol':<52} {registration['seconds']:>9.2f} s "
            f"{registration['peak_mib']:>8.0f} MiB   steps {registration['steps']}"
        )
        print(f"{'warping one map':<52} {registration['warp_seconds']:>9.2f} s")
        print(f"{'the atlas into the participant (pull_back)':<52} {pull_back:>9.2f} s")
        if gradcam:
            total = gradcam["seconds"] + registration["seconds"] + registration["warp_seconds"]
            print(
                f"{'Grad-CAM + registration + warp per participant':<52} {total:>9.2f} s "
                f"(goal on an H100: <= {GOAL_H100_S:.0f} s)"
            )
        return
    print(
        f"{'registration: per affine iteration':<52} "
        f"{registration['seconds_per_affine_iteration']:>9.2f} s "
        f"{registration['peak_mib']:>8.0f} MiB"
    )
    print(
        f"{'registration: per deformable step on all 3 levels':<52} "
        f"{registration['seconds_per_step_all_levels']:>9.2f} s"
    )
    print(
        f"{'registration, protocol at 100 steps a level':<52} "
        f"{registration['protocol_seconds_100_steps'] / 60:>9.1f} min"
    )
    print(
        f"{'registration, protocol at 1000 steps a level':<52} "
        f"{registration['protocol_seconds_1000_steps'] / 3600:>9.1f} h"
    )
    print(f"{'warping one map':<52} {registration['warp_seconds']:>9.2f} s")
    print(f"{'the atlas into the participant (pull_back)':<52} {pull_back:>9.2f} s")


if __name__ == "__main__":
    main()
