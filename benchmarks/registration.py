"""Registration settings against the SYNTHETIC truth: Dice of the planted age regions per group.

For a finished SYNTHETIC run (its results_dir) and a config, every test
participant of each group is registered again to the group's existing atlas
(explain/atlas/{group}.nii.gz) with the config's ``registration`` settings,
changed by any --set. Its truth labels are then taken into atlas space with
no registration (world coordinates), the affine part, and affine + SVFFD, and
compared with the leave-one-out consensus of the group's other test
participants, as the workflow's truth check does (ageatlas.explain.truth).
Printed per group: Dice of the age regions (and of all regions) per stage,
and seconds per registration (CPU seconds of its one thread: robust to a
busy machine; wall seconds are in the record). Nothing under the results dir is written; the
table and the records go to --out (default benchmarks/runs/registration/).

    nice .venv/bin/python benchmarks/registration.py --results results/demo \\
        --configfile config/demo.yaml --set registration.finest_level=0 --jobs 2

--set takes YAML values: ``--set registration.control_point_spacing_mm=[36,36,48]``;
``--set registration.lncc_kernel=null`` removes a key (back to its default).
--trace records each test participant's loss per deformable step (LNCC and
weighted bending energy, per pyramid level) in the record and prints, per
level, the median loss at a few steps and the step at which it first fell
below its start; with ``--set registration.patience=100000`` no level stops
early, so the whole curve is seen.
--rebuild-atlas first builds each group's atlas again, as the workflow would with
this config (atlas.n_members members, atlas.iterations template passes, the
registration settings), into --out; the test participants are then registered
to that atlas, and the atlas-building seconds are reported too.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    args = parse_args()
    config = load_config(args.configfile, args.set)
    results = Path(args.results)
    if len(config["registration"]["channels"]) > 1 and not args.rebuild_atlas:
        raise SystemExit("several registration channels need --rebuild-atlas (one atlas each)")
    jobs = participants(results, config, args.groups, args.limit)
    out = Path(args.out) if args.out else REPO / "benchmarks" / "runs" / "registration"
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or time.strftime("%Y%m%d-%H%M%S")
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        atlas_seconds = None
        if args.rebuild_atlas:
            atlases, atlas_seconds = rebuild_atlases(
                pool, results, config, sorted({j["group"] for j in jobs}), out / f"{name}-atlas"
            )
            for job in jobs:
                job["atlas"], job["built_atlas"] = atlases[job["group"]], True
        for job in jobs:
            job["trace"] = args.trace
        done = list(pool.map(register_one, [(job, config["registration"]) for job in jobs]))
    wall = time.perf_counter() - start
    table = summarise(done)
    print_table(table, wall, args)
    if args.trace:
        print_trace(done)
    if atlas_seconds:
        print(
            f"atlas building: {len(atlas_seconds)} registrations, "
            f"{np.mean(atlas_seconds):.1f} CPU s each"
        )
    record = {
        "command": " ".join(["benchmarks/registration.py", *args.argv]),
        "registration": config["registration"],
        "wall_seconds": wall,
        "atlas_rebuilt": bool(args.rebuild_atlas),
        "atlas_seconds_per_registration": float(np.mean(atlas_seconds)) if atlas_seconds else None,
        "jobs": args.jobs,
        "groups": table,
        "participants": [{k: v for k, v in d.items() if k != "maps"} for d in done],
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"record: {out / f'{name}.json'}")


def parse_args():
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results/demo", help="a finished SYNTHETIC run")
    parser.add_argument("--configfile", default="config/demo.yaml")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=YAML", help="change a setting"
    )
    parser.add_argument("--groups", nargs="*", help="only these groups (default: all)")
    parser.add_argument("--limit", type=int, help="at most this many participants a group")
    parser.add_argument("--jobs", type=int, default=1, help="registrations at once (1 thread each)")
    parser.add_argument("--out", help="folder for the JSON record")
    parser.add_argument(
        "--rebuild-atlas", action="store_true", help="build the atlases again with these settings"
    )
    parser.add_argument("--name", help="record name (default: a time stamp)")
    parser.add_argument(
        "--trace", action="store_true", help="record and summarise the loss per deformable step"
    )
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    return args


def load_config(path, changes) -> dict:
    """The config as the workflow sees it (validated, defaults filled), with --set applied."""
    from snakemake.utils import validate

    config = yaml.safe_load(Path(path).read_text())
    for change in changes:
        key, value = change.split("=", 1)
        section, name = key.split(".", 1)
        value = yaml.safe_load(value)
        if value is None:  # --set section.key=null: back to the default
            config.get(section, {}).pop(name, None)
        else:
            config.setdefault(section, {})[name] = value
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return config


def participants(results: Path, config: dict, groups, limit) -> list[dict]:
    from ageatlas.cohort.table import read_participant_tsv

    cohort = read_participant_tsv(results / "cohort" / "cohort.tsv")
    test = cohort[cohort["split"] == "test"]
    jobs = []
    for group, rows in test.groupby("group", sort=True):
        if groups and group not in groups:
            continue
        eids = rows["eid"].tolist()[:limit] if limit else rows["eid"].tolist()
        for eid in eids:
            jobs.append(
                {
                    "group": group,
                    "eid": eid,
                    "images": channel_paths(results, eid, config),
                    "labels": str(results / "synthetic" / "truth" / f"{eid}_regions.nii.gz"),
                    "atlas": config["atlas"]["given"].get(
                        group, str(results / "explain" / "atlas" / f"{group}.nii.gz")
                    ),
                    "built_atlas": group not in config["atlas"]["given"],
                }
            )
    return jobs


def channel_paths(results: Path, eid, config: dict) -> list[str]:
    """A participant's stitched images of the registration's channels."""
    from ageatlas.core.paths import stitched_path

    folder = results / "ingest" / str(eid)
    return [str(stitched_path(folder, str(eid), c)) for c in config["registration"]["channels"]]


def rebuild_atlases(pool, results: Path, config: dict, groups, out: Path):
    """Each group's atlas built as the workflow's atlas rules build it, under ``out``."""
    import nibabel as nib

    from ageatlas.cohort.selection import choose_members, choose_reference
    from ageatlas.cohort.table import read_participant_tsv
    from ageatlas.explain.atlas import initial_template, update_template

    cohort = read_participant_tsv(results / "cohort" / "cohort.tsv")
    section, clip = config["registration"], config["registration"]["clip"]
    out.mkdir(parents=True, exist_ok=True)
    images = lambda eid: channel_paths(results, eid, config)  # noqa: E731
    members, templates = {}, {}
    for group in groups:
        rows = cohort[cohort["split"].isin(config["atlas"]["splits"]) & (cohort["group"] == group)]
        members[group] = [str(e) for e in choose_members(rows, config["atlas"]["n_members"])]
        reference = config["atlas"]["reference"].get(group) or choose_reference(
            rows[rows["eid"].isin(members[group])]
        )
        templates[group] = save_channels(
            [initial_template(nib.load(p), clip) for p in images(reference)],
            out / f"{group}-iter0",
        )
    seconds = []
    for iteration in range(1, config["atlas"]["iterations"] + 1):
        items = [
            ({"images": images(eid), "atlas": templates[g], "group": g, "eid": eid}, section)
            for g in groups
            for eid in members[g]
        ]
        fitted = list(pool.map(register_member, items))
        seconds += [f["seconds"] for f in fitted]
        for group in groups:
            ok = {
                f["eid"]: (f["registration"], f["warped"])
                for f in fitted
                if f["group"] == group and f["registration"] is not None
            }
            update = update_template([nib.load(p) for p in templates[group]], ok)
            templates[group] = save_channels(update.templates, out / f"{group}-iter{iteration}")
    return templates, seconds


def save_channels(images, stem: Path) -> list[str]:
    """One NIfTI per channel: stem.nii.gz, then stem_ch1.nii.gz, ..."""
    import nibabel as nib

    paths = [f"{stem}{f'_ch{i}' if i else ''}.nii.gz" for i in range(len(images))]
    for image, path in zip(images, paths):
        nib.save(image, path)
    return paths


def register_member(item) -> dict:
    """One atlas member to the current template (as rule atlas_register)."""
    import nibabel as nib
    import torch

    from ageatlas.explain import register as reg
    from ageatlas.explain import registration_settings
    from ageatlas.explain.atlas import warped_member

    torch.set_num_threads(1)
    job, section = item
    settings = registration_settings.settings_from_config(section)
    cpu = time.process_time()
    registration, record = reg.register_files(
        job["images"],
        job["atlas"],
        settings,
        max_folding_share=section["max_folding_share"],
        fixed_normalised=True,
    )
    warped = None
    if registration is not None:
        warped = [warped_member(registration, nib.load(p), settings.clip) for p in job["images"]]
    return {
        "group": job["group"],
        "eid": job["eid"],
        "registration": registration,
        "warped": warped,
        "seconds": time.process_time() - cpu,
    }


def register_one(item) -> dict:
    """One participant: register, then its labels in atlas space per stage."""
    import nibabel as nib
    import torch

    from ageatlas.explain import register as reg
    from ageatlas.explain import registration_settings
    from ageatlas.explain.truth import labels_in_atlas

    torch.set_num_threads(1)
    job, section = item
    settings = registration_settings.settings_from_config(section)
    atlas = reg.load_channels(job["atlas"])
    start, cpu = time.perf_counter(), time.process_time()
    trace = {} if job.get("trace") else None
    registration = reg.register(
        reg.load_channels(job["images"]),
        atlas,
        settings,
        fixed_normalised=job["built_atlas"],
        trace=trace,
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    maps = labels_in_atlas(registration, nib.load(job["labels"]), atlas[0])
    m = registration.metrics
    print(f"{job['group']} {job['eid']}: {cpu_seconds:.1f} CPU s", flush=True)
    return {
        "group": job["group"],
        "eid": job["eid"],
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "ncc": {stage: m[stage]["ncc"] for stage in ("before", "affine", "deformable")},
        "folding_share": m["folding_share"],
        "qc": reg.qc_reasons(m, section["max_folding_share"]),
        "steps": m["deformable_steps"],
        "levels": m["levels"],
        "maps": maps,
        **({"trace": trace} if trace is not None else {}),
    }


def summarise(done: list[dict]) -> dict:
    from ageatlas.explain.truth import STAGES, leave_one_out_dice
    from ageatlas.synthetic.phantom import AGE_LABELS, REGION_LABELS

    age = list(AGE_LABELS)
    every = [v for v in REGION_LABELS if v > 0]
    table = {}
    for group in sorted({d["group"] for d in done}):
        rows = [d for d in done if d["group"] == group]
        entry = {
            "n": len(rows),
            "seconds": float(np.mean([d["seconds"] for d in rows])),
            "cpu_seconds": float(np.mean([d["cpu_seconds"] for d in rows])),
        }
        entry["failed_qc"] = sum(bool(d["qc"]) for d in rows)
        for stage in STAGES:
            maps = [d["maps"][stage] for d in rows]
            per_label = leave_one_out_dice(maps, age)
            entry[f"age_{stage}"] = float(np.nanmean(per_label))
            # Each age region apart: thin ones (the discs) move most between stages.
            for label, dice in zip(age, np.nanmean(per_label, axis=0)):
                entry[f"{REGION_LABELS[label]}_{stage}"] = float(dice)
            entry[f"all_{stage}"] = float(np.nanmean(leave_one_out_dice(maps, every)))
        table[group] = entry
    return table


def print_trace(done: list[dict]) -> None:
    """Per pyramid level, the median over participants of the loss (LNCC + weighted bending)
    at a few steps, and of the first step at which the loss fell below its start."""
    for level in sorted({lv for d in done for lv in d["trace"]}, reverse=True):
        curves = [np.asarray(d["trace"][level]) for d in done if level in d["trace"]]
        cells = []
        for step in (0, 5, 10, 20, 30, 49, 99):
            at = [c[step] for c in curves if len(c) > step]
            if len(at) == len(curves):
                similarity, bending = np.median(at, axis=0)
                cells.append(f"{step}: {similarity:.4f} + {bending:.4f}")
        below = [
            int(np.argmax(total[1:] < total[0])) + 1 if (total[1:] < total[0]).any() else None
            for total in (c.sum(axis=1) for c in curves)
        ]
        reached = [b for b in below if b is not None]
        print(
            f"level {level}: median LNCC + bending at step {'; '.join(cells)}; below its start "
            f"after {np.median(reached) if reached else '-'} steps (median, "
            f"{len(reached)} of {len(curves)} participants)"
        )


def print_table(table: dict, wall: float, args) -> None:
    from ageatlas.explain.truth import STAGES
    from ageatlas.synthetic.phantom import AGE_LABELS, REGION_LABELS

    print(f"settings: {' '.join(args.set) or '(config as is)'}  config: {args.configfile}")
    print(
        "| group | n | age none | age affine | age deformable | all none | all affine "
        "| all deformable | CPU s / registration | deformable > affine > none |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for group, e in table.items():
        ordered = e["age_deformable"] > e["age_affine"] > e["age_none"]
        print(
            f"| {group} | {e['n']} | {e['age_none']:.3f} | {e['age_affine']:.3f} "
            f"| {e['age_deformable']:.3f} | {e['all_none']:.3f} | {e['all_affine']:.3f} "
            f"| {e['all_deformable']:.3f} | {e['cpu_seconds']:.1f} | {'yes' if ordered else 'no'} |"
        )
    mean = {k: np.mean([e[k] for e in table.values()]) for k in next(iter(table.values()))}
    print(
        f"| mean | | {mean['age_none']:.3f} | {mean['age_affine']:.3f} "
        f"| {mean['age_deformable']:.3f} | {mean['all_none']:.3f} | {mean['all_affine']:.3f} "
        f"| {mean['all_deformable']:.3f} | {mean['cpu_seconds']:.1f} | |"
    )
    print("age region, mean of the groups: none / affine / deformable")
    for name in (REGION_LABELS[label] for label in AGE_LABELS):
        print(f"  {name}: " + " / ".join(f"{mean[f'{name}_{s}']:.3f}" for s in STAGES))
    print(f"wall {wall:.0f} s with {args.jobs} job(s)")


if __name__ == "__main__":
    main()
