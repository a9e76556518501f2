"""Stable batches and the batch runner: isolation, records, reuse, manifests."""

import json
import os
from pathlib import Path

import pytest

from ageatlas.core import batch_run, batches


def test_count_is_a_power_of_two_near_the_size():
    assert batches.batch_count(100, 1) == 0
    assert batches.batch_count(10, 25) == 1
    assert batches.batch_count(100, 25) == 4
    assert batches.batch_count(101, 25) == 8
    assert batches.batch_count(100_000, 400) == 256


def test_size_one_is_one_batch_per_participant():
    assert batches.plan(["1000003", "1000001"], 0) == {
        "1000001": ["1000001"],
        "1000003": ["1000003"],
    }


def test_membership_does_not_move_when_the_cohort_grows():
    old = [str(1000000 + 7 * i) for i in range(300)]
    new = old + [str(2000000 + 13 * i) for i in range(50)]
    count = batches.batch_count(len(old), 100)
    assert batches.batch_count(len(new), 100) == count
    before, after = batches.plan(old, count), batches.plan(new, count)
    for name, members in before.items():
        assert after[name][: len(members)] == members


def test_doubling_splits_each_batch_in_two():
    eids = [str(1000000 + 3 * i) for i in range(400)]
    small, large = batches.plan(eids, 4), batches.plan(eids, 8)
    for name, members in large.items():
        index = int(name.split("of")[0])
        assert set(members) <= set(small[f"{index % 4}of4"])


def test_non_numeric_eid_is_a_clear_error():
    with pytest.raises(ValueError, match="abc"):
        batches.batch_name("abc", 4)


# ---- requests ----------------------------------------------------------------------

ENTRY = {"minutes_per_participant": 2.0, "mb_per_process": 1000}


def test_a_pool_shares_the_participants_and_holds_one_each():
    minutes, mb = batches.batch_request(ENTRY, 10, 4, pooled=True)
    # 10 participants on 4 processes: 3 rounds of 2 minutes, 4 participants in memory
    assert minutes == batches.STARTUP_MINUTES + 6
    assert mb == 4000


def test_one_process_does_them_in_turn_on_a_gpu_and_spread_over_threads_on_cpus():
    gpu_minutes, gpu_mb = batches.batch_request(ENTRY, 10, 4, pooled=False, gpu=True)
    cpu_minutes, _ = batches.batch_request(ENTRY, 10, 4, pooled=False)
    assert gpu_minutes == batches.STARTUP_MINUTES + 20 and gpu_mb == 1000
    assert cpu_minutes == batches.STARTUP_MINUTES + 5  # core-minutes over 4 threads


def test_memory_scales_and_has_a_floor():
    assert batches.batch_request(ENTRY, 10, 4, pooled=True, mem_scale=0.5)[1] == 2000
    assert batches.batch_request(ENTRY, 1, 4, pooled=True, mem_scale=0.01)[1] == 100


def test_scaled_minutes_leave_memory_and_the_measured_entry_alone():
    measured = {"cpu": {"minutes_per_participant": 2.0, "mb_per_process": 100, "from": "x"}}
    scaled = batches.scale_minutes(measured, 28.0)
    assert scaled == {"cpu": {"minutes_per_participant": 56.0, "mb_per_process": 100, "from": "x"}}
    assert measured["cpu"]["minutes_per_participant"] == 2.0


def test_scaled_memory_rounds_up_and_leaves_the_minutes_alone():
    measured = {"cpu": {"minutes_per_participant": 2.0, "mb_per_process": 100, "from": "x"}}
    scaled = batches.scale_memory(measured, 1.121)
    assert scaled == {"cpu": {"minutes_per_participant": 2.0, "mb_per_process": 113, "from": "x"}}
    assert measured["cpu"]["mb_per_process"] == 100


def test_a_broken_requests_file_names_the_file_and_entry(tmp_path):
    path = tmp_path / "requests.yaml"
    path.write_text("rules:\n  stitch:\n    cpu: {minutes_per_participant: 0, mb_per_process: 5}\n")
    with pytest.raises(ValueError, match=r"requests.yaml: stitch.cpu.minutes_per_participant"):
        batches.load_requests(path)
    path.write_text("just text")
    with pytest.raises(ValueError, match="requests.yaml: not a requests file"):
        batches.load_requests(path)


def write_double(source, target, fail=False):
    """Module-level work (the pool pickles it by reference)."""
    if fail:
        raise OSError(f"cannot read {source}")
    value = int(Path(source).read_text())
    Path(target).write_text(str(2 * value))
    return {"value": value}


def make_tasks(tmp_path, n, broken=()):
    tasks = []
    for i in range(n):
        eid = str(1000000 + i)
        source = tmp_path / "in" / f"{eid}.txt"
        source.parent.mkdir(exist_ok=True)
        source.write_text(str(i))
        target = tmp_path / "out" / f"{eid}.txt"
        target.parent.mkdir(exist_ok=True)
        kwargs = {"source": str(source), "target": str(target), "fail": eid in broken}
        tasks.append(batch_run.Task(eid, (str(source),), (str(target),), kwargs))
    return tasks


def run(tmp_path, tasks, work=write_double, settings=None, **options):
    return batch_run.run_batch(
        work,
        tasks,
        stage="double",
        settings=settings or {"factor": 2},
        record_dir=tmp_path / "records",
        log_dir=tmp_path / "logs",
        manifest=tmp_path / "manifest.tsv",
        **options,
    )


@pytest.mark.parametrize("threads", [1, 2])
def test_one_broken_participant_is_its_own_failure(tmp_path, threads):
    tasks = make_tasks(tmp_path, 4, broken={"1000002"})
    rows = run(tmp_path, tasks, threads=threads)
    status = {r["eid"]: r["status"] for r in rows}
    assert status == {"1000000": "done", "1000001": "done", "1000002": "failed", "1000003": "done"}
    assert (tmp_path / "out" / "1000003.txt").read_text() == "6"
    assert "cannot read" in (tmp_path / "logs" / "1000002.log").read_text()
    assert "1000002" not in (tmp_path / "logs" / "1000001.log").read_text()
    kept = batch_run.finished(
        [str(tmp_path / "out" / f"{t.eid}.txt") for t in tasks], [tmp_path / "manifest.tsv"]
    )
    assert [Path(p).stem for p in kept] == ["1000000", "1000001", "1000003"]


def test_a_batch_where_everyone_fails_fails(tmp_path):
    tasks = make_tasks(tmp_path, 2, broken={"1000000", "1000001"})
    with pytest.raises(batch_run.BatchFailed, match="every participant failed"):
        run(tmp_path, tasks)
    assert (tmp_path / "manifest.tsv").exists()  # what it knows is still written


def test_a_rerun_reuses_finished_participants_and_redoes_changed_ones(tmp_path):
    tasks = make_tasks(tmp_path, 3)
    run(tmp_path, tasks)
    first = (tmp_path / "out" / "1000000.txt").stat().st_mtime_ns
    # A kill mid-way: participant 1000001's record never got written.
    (tmp_path / "records" / "1000001.json").unlink()
    # Participant 1000002's input changed since.
    source = tmp_path / "in" / "1000002.txt"
    source.write_text("10")
    os.utime(source, ns=(1, 1))
    rows = run(tmp_path, tasks)
    assert [r["status"] for r in rows] == ["reused", "done", "done"]
    assert (tmp_path / "out" / "1000000.txt").stat().st_mtime_ns == first
    assert (tmp_path / "out" / "1000002.txt").read_text() == "20"
    assert run(tmp_path, tasks, reuse=False)[0]["status"] == "done"


def test_changed_settings_or_a_missing_output_redo_the_participant(tmp_path):
    tasks = make_tasks(tmp_path, 2)
    run(tmp_path, tasks)
    (tmp_path / "out" / "1000001.txt").unlink()
    assert [r["status"] for r in run(tmp_path, tasks)] == ["reused", "done"]
    rows = run(tmp_path, tasks, settings={"factor": 3})
    assert [r["status"] for r in rows] == ["done", "done"]
    record = json.loads((tmp_path / "records" / "1000000.json").read_text())
    assert record["info"] == {"value": 0} and record["status"] == "done"


def test_finished_refuses_a_participant_no_manifest_lists(tmp_path):
    run(tmp_path, make_tasks(tmp_path, 1))
    with pytest.raises(ValueError, match="1000009"):
        batch_run.finished([str(tmp_path / "1000009.npy")], [tmp_path / "manifest.tsv"])


def test_one_manifest_given_as_a_string_is_one_manifest(tmp_path):
    # A Snakemake named input of one file is a str: iterating it would give characters.
    run(tmp_path, make_tasks(tmp_path, 1))
    manifest = str(tmp_path / "manifest.tsv")
    assert [r["eid"] for r in batch_run.read_manifests(manifest)] == ["1000000"]
    assert batch_run.failures([manifest, [manifest]]) == {}


def test_reuse_can_be_chosen_per_participant(tmp_path):
    tasks = make_tasks(tmp_path, 2)
    run(tmp_path, tasks)
    rows = run(tmp_path, tasks, reuse=lambda eid: eid != "1000001")
    assert [r["status"] for r in rows] == ["reused", "done"]


def test_sigterm_becomes_a_clean_exit(tmp_path):
    """scancel sends SIGTERM: the atomic writers' clean-up must run, leaving no temporary file."""
    import subprocess
    import sys

    target = tmp_path / "out.npy"
    code = f"""
import os, signal, time
from ageatlas.core.batch_run import exit_on_sigterm
from ageatlas.core.files import atomic_path
exit_on_sigterm()
with atomic_path({str(target)!r}) as tmp:
    tmp.write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
"""
    done = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert done.returncode == 128 + 15
    assert list(tmp_path.iterdir()) == []


def test_work_done_together_keeps_each_participants_outcome(tmp_path):
    """A model's batch (Together): one call for several participants, one outcome each."""
    tasks = make_tasks(tmp_path, 3)
    calls = []

    def double_all(chunk):
        calls.append([t.eid for t in chunk])
        outcomes = []
        for task in chunk:
            if task.eid == "1000001":
                outcomes.append({"status": "error", "error": "cache has the wrong shape"})
            else:
                write_double(task.kwargs["source"], task.kwargs["target"])
                outcomes.append({"status": "ok", "seconds": 0.5})
        return outcomes

    rows = run(tmp_path, tasks, work=batch_run.Together(double_all, chunk=2))
    assert calls == [["1000000", "1000001"], ["1000002"]]
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert "wrong shape" in rows[1]["error"]
    rows = run(tmp_path, tasks, work=batch_run.Together(double_all, chunk=2))
    assert [r["status"] for r in rows] == ["reused", "failed", "reused"]  # failed: tried again
