"""The sizing arithmetic (cluster_sizing) on a small fake record set: no benchmark, no disk
measured."""

import cluster_sizing as sizing
import pytest

SETTINGS = sizing.Settings(
    split_sizes={"train": 0.4923, "val": 0.1231, "test": 0.3846},
    grid=(8, 8, 8),
    projection_size=(4, 4),
    epochs_3d=10,
    epochs_25d=5,
    affine_iterations=200,
    steps_per_level=1000,
    atlas_members=50,
    atlas_iterations=2,
)


def record(benchmark, results):
    return {
        "benchmark": benchmark,
        "source": "fake",
        "command": "test",
        "date": "2026-11",
        "machine": "test",
        "data": "none",
        "results": results,
    }


def train_row(model, device, training, inference, size="8x8x8"):
    return {
        "model": model,
        "device_type": device,
        "threads": 2,
        "training": training,
        "inference": inference,
        "input": ("1x" if model == "3d" else "2x") + size,
    }


INGEST = record("ingest", {"threads": 1, "steps": {"ageatlas": {"seconds": 3.6}}})
DISK = record(
    "disk",
    {
        "threads": 1,
        "grid": [8, 8, 8],
        "seconds": {"preprocess": 1.8, "projection": 0.9},
        "bytes": {
            "stitched": 2**20,
            "cache": 2**20,
            "projection": 0,
            "gradcam": 2**20,
            "registration": 0,
            "warped": 0,
            "atlas_member": 2**30,
            "template": 0,
        },
    },
)
TRAIN = record(
    "train",
    {"rows": [train_row("3d", "cpu", 100.0, 20.0), train_row("2.5d", "cpu", 1.0, 0.5, "4x4")]},
)
EXPLAIN_CPU = record(
    "explain",
    {
        "device_type": "cpu",
        "threads": 2,
        "gradcam": {"seconds": 90.0, "shape": [8, 8, 8]},
        "registration": {
            "seconds_per_affine_iteration": 2.0,
            "seconds_per_step_all_levels": 50.0,
            "warp_seconds": None,
        },
    },
)
EXPLAIN_GPU = record(
    "explain",
    {
        "device_type": "cuda",
        "gradcam": {"seconds": 0.36, "shape": [8, 8, 8]},
        "registration": {"seconds": 18.0, "warp_seconds": 0.5},
    },
)


def by_stage(n, explains=(EXPLAIN_CPU,), trains=(TRAIN,)):
    rate = sizing.rates(INGEST, list(trains), list(explains), DISK, SETTINGS)
    return {row["stage"]: row for row in sizing.cost(n, SETTINGS, rate, DISK["results"]["bytes"])}


def test_split_counts_give_the_papers_split_and_read_counts_as_fractions():
    assert sizing.split_counts(3120, SETTINGS.split_sizes) == {
        "train": 1536,
        "val": 384,
        "test": 1200,
        "unused": 0,
    }
    assert sizing.split_counts(1000, {"train": 1536, "val": 384, "test": 1200}) == {
        "train": 492,
        "val": 123,
        "test": 385,
        "unused": 0,
    }


def test_hours_are_seconds_times_threads_times_units():
    rows = by_stage(1000)
    assert rows["ingest: zip -> stitched W + F"]["cpu_h"].value == pytest.approx(3.6 * 1000 / 3600)
    assert rows["preprocess: training cache"]["cpu_h"].value == pytest.approx(1.8 * 1000 / 3600)
    # 10 epochs of 492 training samples and 123 validation predictions, 2 threads each.
    assert rows["3D training"]["cpu_h"].value == pytest.approx(
        10 * (492 * 100 + 123 * 20) * 2 / 3600
    )
    assert rows["3D inference"]["cpu_h"].value == pytest.approx((123 + 385) * 20 * 2 / 3600)
    # Registration: 200 affine iterations + 1,000 steps on each level, per test participant.
    registration = rows["registration to the group atlas"]["cpu_h"].value
    assert registration == pytest.approx(385 * (200 * 2 + 1000 * 50) * 2 / 3600)
    assert rows["2.5D training"]["cpu_h"].value == pytest.approx(
        5 * (492 * 1.0 + 123 * 0.5) * 2 / 3600
    )


def test_disk_and_the_fixed_atlas_cost():
    rows = by_stage(1000)
    assert rows["ingest: zip -> stitched W + F"]["disk_gib"] == pytest.approx(1000 / 1024)
    assert rows["Grad-CAM"]["disk_gib"] == pytest.approx(385 / 1024)
    # 6 groups x 50 members x 2 passes, whether 1,000 or 100,000 participants.
    assert rows["atlases (fixed per run)"]["disk_gib"] == pytest.approx(600)
    assert by_stage(100_000)["atlases (fixed per run)"]["disk_gib"] == pytest.approx(600)


def test_no_gpu_record_means_not_measured_and_a_missing_cpu_rate_too():
    rows = by_stage(1000)
    assert rows["Grad-CAM"]["gpu_h"] is None
    assert rows["ingest: zip -> stitched W + F"]["gpu_h"] == "-"  # a CPU stage
    assert rows["warp Grad-CAM maps"]["cpu_h"] is None  # the CPU record has no warp time
    # The atlas's registrations are measured, its warps are not: a lower bound, shown as such.
    atlas = rows["atlases (fixed per run)"]["cpu_h"]
    assert atlas.partial and atlas.value == pytest.approx(600 * (200 * 2 + 1000 * 50) * 2 / 3600)
    assert sizing.fmt(atlas).startswith("≥ ")
    table = sizing.markdown(
        SETTINGS,
        sizing.rates(INGEST, [TRAIN], [EXPLAIN_CPU], DISK, SETTINGS),
        DISK["results"]["bytes"],
    )
    assert "not measured" in table and "| **total** |" in table


def test_a_gpu_record_gives_gpu_hours_from_its_own_seconds():
    rows = by_stage(1000, explains=(EXPLAIN_CPU, EXPLAIN_GPU))
    assert rows["Grad-CAM"]["gpu_h"].value == pytest.approx(385 * 0.36 / 3600)
    assert rows["registration to the group atlas"]["gpu_h"].value == pytest.approx(
        385 * 18.0 / 3600
    )
    assert rows["3D training"]["gpu_h"] is None  # no CUDA training record


def test_records_of_another_size_or_benchmark_are_refused(tmp_path):
    small = record("train", {"rows": [train_row("3d", "cpu", 1.0, 1.0, "4x4x4")]})
    with pytest.raises(ValueError, match="measured 1x4x4x4"):
        sizing.rates(INGEST, [small], [], DISK, SETTINGS)
    path = tmp_path / "r.json"
    sizing.save_record(path, TRAIN)
    assert sizing.load_record(path, "train") == TRAIN
    with pytest.raises(ValueError, match="not a 'explain'"):
        sizing.load_record(path, "explain")


def test_slurm_jobs_are_batches_not_participants():
    settings = sizing.Settings(split_sizes={"train": 0.5, "val": 0.12, "test": 0.38})
    stages = {st.name: st for st in sizing.stages(100_000, settings)}
    assert stages["ingest: zip -> stitched W + F"].jobs == 256  # 100,000 / 400 -> 2^8
    assert stages["Grad-CAM"].jobs == 256
    assert stages["3D training"].jobs == 1
    # registration batches are per group: 38,000 test / 6 groups -> 16 batches each
    assert stages["registration to the group atlas"].jobs == 6 * 16
    total = sum(st.jobs for st in stages.values())
    assert total < 1500, total
    one_each = sizing.Settings(split_sizes=settings.split_sizes, batch_size=1)
    assert sizing.stages(1000, one_each)[0].jobs == 1000  # batch size 1: one job per participant


def test_job_hours_add_start_up_and_spread_work_over_the_pool():
    stage = sizing.Stage("x", "", {"ingest": 1}, jobs=10, parallel=4)
    hours = sizing.job_hours(stage, sizing.Hours(8.0))
    assert hours.value == pytest.approx(10 * sizing.JOB_STARTUP_S / 3600 + 2.0)
    assert sizing.job_hours(stage, None) is None


def test_the_shipped_batch_requests_are_what_the_records_say(tmp_path):
    """workflow/resources/batch_requests.yaml is written from benchmarks/records by sizing.py
    --write-requests: a record or margin changed without rewriting it fails here."""
    import sizing as script
    import yaml

    # the inputs sizing.py reads by default (a GPU record too, once gpu_check.sh has left one)
    args = script.parse_args(["--disk", str(script.RECORDS / "disk.json")])
    settings, ingest, trains, explains, disk = script.load_inputs(args)
    sources: dict = {}
    rate = sizing.rates(ingest, trains, explains, disk, settings, sources)
    out = tmp_path / "requests.yaml"
    script.write_requests(out, rate, ingest, explains, sources)
    shipped = script.REPO / "workflow" / "resources" / "batch_requests.yaml"
    assert yaml.safe_load(out.read_text()) == yaml.safe_load(shipped.read_text()), (
        "rerun: .venv/bin/python benchmarks/sizing.py --disk benchmarks/records/disk.json "
        "--write-requests workflow/resources/batch_requests.yaml"
    )
    # every batch rule of the workflow has a request, measured or labelled as assumed
    rules = yaml.safe_load(shipped.read_text())["rules"]
    assert set(rules) == set(sizing.BATCH_RULES)
    assert rules["stitch"]["cpu"]["minutes_from"].startswith(".venv/bin/python benchmarks/ingest")
