"""Running one batch of per-participant work: each participant isolated, nothing finished lost.

A batch job (:mod:`ageatlas.core.batches`) runs a function once per
participant, in a process pool sized by the job's threads (or in the job's
own process, where a model or atlas is loaded once). For each participant:

- its own log file (``<log_dir>/<eid>.log``), as a per-participant job had;
- an exception is that participant's failure, recorded with its message;
  the others go on. The job fails only when all of its participants
  failed (then something is wrong with the job, not the data; with batch
  size 1 that is exactly the per-participant behaviour);
- a record (``<record_dir>/<eid>.json``) written last, once its outputs
  exist. It holds a fingerprint of the participant's inputs (size and
  modification time), the stage's settings and the package's version, so a
  retried or rerun batch reuses exactly the participants whose work would
  come out the same, and redoes the one a kill interrupted.

The batch's manifest (the rule's declared output) lists every member with
its status (done, reused or failed), seconds and error: later rules read it
to use only the participants that finished (:func:`finished`), and the
cohort's failure table collects the failed rows.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from ageatlas import __version__
from ageatlas.core import provenance
from ageatlas.core.file_state import digest, file_state
from ageatlas.core.files import atomic_path
from ageatlas.core.paths import eid_of_path

log = logging.getLogger(__name__)

DONE, REUSED, FAILED = "done", "reused", "failed"
MANIFEST_COLUMNS = ("eid", "status", "seconds", "error", "log")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class BatchFailed(RuntimeError):
    """Every participant the batch tried failed."""


@dataclass(frozen=True)
class Task:
    """One participant's work: ``work(**kwargs)`` reads ``inputs`` and writes ``outputs``."""

    eid: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    kwargs: Mapping = field(default_factory=dict)


def fingerprint(stage: str, settings: Mapping, inputs: Iterable[str]) -> str:
    """What a participant's outputs depend on: inputs, settings, the package's version.

    Not every commit: a code change without a new version keeps finished
    participants unless the run asks otherwise (``batch.reuse: false``, or ``redo``).
    """
    return digest(
        {
            "stage": stage,
            "settings": settings,
            "version": __version__,
            "inputs": [file_state(p) for p in inputs],
        }
    )


def _reusable(record_path: Path, digest: str, outputs: Sequence[str]) -> bool:
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return False
    return (
        record.get("status") == DONE
        and record.get("fingerprint") == digest
        and all(os.path.exists(p) for p in outputs)
    )


def _write_json(path: Path, content: Mapping) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=1, default=str) + "\n")


def _sidecars(task: Task, base: Mapping) -> None:
    """Provenance beside each table or map the participant wrote, as a per-participant job's."""
    inputs = [provenance.describe_file(p) for p in task.inputs]
    wildcards = {**base.get("wildcards", {}), "eid": task.eid}
    for output in task.outputs:
        if provenance.is_result(output):
            provenance.write_sidecar(output, {**base, "wildcards": wildcards, "inputs": inputs})


def _run_one(work: Callable, task: Task, log_path: str, base: Mapping | None = None) -> dict:
    """One participant, with its own log file; an exception is its result, not the batch's."""
    root = logging.getLogger()
    handler = logging.FileHandler(log_path, mode="w")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    start = time.perf_counter()
    row = {"eid": task.eid, "log": log_path}
    try:
        for output in task.outputs:  # as Snakemake does for a job's declared outputs
            Path(output).parent.mkdir(parents=True, exist_ok=True)
        info = work(**task.kwargs)
        missing = [p for p in task.outputs if not os.path.exists(p)]
        if missing:
            raise RuntimeError(f"finished without writing {', '.join(missing)}")
        if base is not None:
            _sidecars(task, base)
        row.update(status=DONE, error="", info=info if isinstance(info, dict) else {})
    except Exception as err:  # noqa: BLE001 - one participant's failure never stops its batch
        logging.getLogger(__name__).error(
            "participant %s failed:\n%s", task.eid, traceback.format_exc()
        )
        row.update(status=FAILED, error=f"{type(err).__name__}: {err}", info={})
    finally:
        row["seconds"] = round(time.perf_counter() - start, 3)
        root.removeHandler(handler)
        handler.close()
    return row


def exit_on_sigterm() -> None:
    """Turn SIGTERM (scancel, a time limit, a preemption) into SystemExit, so that the
    atomic writers' clean-up runs and a killed participant leaves no temporary file."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


@dataclass(frozen=True)
class Together:
    """Work done for several participants at once (a model's batch on a GPU):
    ``function(tasks)`` returns one outcome per task, in order: {"status": "ok", ...}
    or {"status": "error", "error": "..."}. ``chunk`` participants per call, so that
    progress shows as they finish."""

    function: Callable[[list[Task]], list[dict]]
    chunk: int = 32


def _together(work: Together, tasks: list[Task], logs: Mapping, base: Mapping | None):
    for start in range(0, len(tasks), work.chunk):
        chunk = tasks[start : start + work.chunk]
        began = time.perf_counter()
        outcomes = work.function(chunk)
        share = round((time.perf_counter() - began) / len(chunk), 3)
        for task, outcome in zip(chunk, outcomes, strict=True):
            missing = [p for p in task.outputs if not os.path.exists(p)]
            if outcome.get("status") == "ok" and missing:
                outcome = {"status": "error", "error": f"did not write {', '.join(missing)}"}
            ok = outcome.get("status") == "ok"
            if ok and base is not None:
                _sidecars(task, base)
            Path(logs[task.eid]).write_text(f"participant {task.eid}: {outcome}\n")
            yield (
                task,
                {
                    "eid": task.eid,
                    "log": logs[task.eid],
                    "status": DONE if ok else FAILED,
                    "error": "" if ok else str(outcome.get("error")),
                    "info": outcome if ok else {},
                    "seconds": outcome.get("seconds", share),
                },
            )


def _results(work, tasks: list[Task], log_dir: Path, threads: int, base: Mapping | None):
    """(task, row) as each participant finishes; a pool of ``threads`` processes if > 1."""
    logs = {t.eid: str(log_dir / f"{t.eid}.log") for t in tasks}
    if isinstance(work, Together):
        yield from _together(work, tasks, logs, base)
        return
    if threads <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield task, _run_one(work, task, logs[task.eid], base)
        return
    with process_pool(min(threads, len(tasks))) as pool:
        futures = {pool.submit(_run_one, work, t, logs[t.eid], base): t for t in tasks}
        for future in as_completed(futures):
            yield futures[future], future.result()


@contextlib.contextmanager
def process_pool(workers: int):
    """A pool of ``workers`` spawned processes that a workflow script may start.

    Spawned, not forked: a forked child would inherit the parent's threads
    (torch, BLAS) mid-state. Each worker turns SIGTERM into SystemExit.
    """
    context = multiprocessing.get_context("spawn")
    with (
        _main_not_rerun(),
        ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=exit_on_sigterm
        ) as pool,
    ):
        yield pool


@contextlib.contextmanager
def _main_not_rerun():
    """Keep spawned workers from re-running the job's script (their __main__ would be it).

    A spawned child imports the parent's main module by its file name; a
    workflow script is top-level code that needs Snakemake's ``snakemake``
    object. Without ``__file__`` the child skips that and imports only what
    the pickled work function needs.
    """
    main = sys.modules.get("__main__")
    file, spec = getattr(main, "__file__", None), getattr(main, "__spec__", None)
    if file is not None:
        del main.__file__
    main.__spec__ = None
    try:
        yield
    finally:
        if file is not None:
            main.__file__ = file
        main.__spec__ = spec


def run_batch(
    work: Callable[..., object],
    tasks: Sequence[Task],
    *,
    stage: str,
    settings: Mapping,
    record_dir: str | Path,
    log_dir: str | Path,
    manifest: str | Path,
    threads: int = 1,
    reuse: bool | Callable[[str], bool] = True,
    provenance_base: Mapping | None = None,
) -> list[dict]:
    """Run ``work(**task.kwargs)`` for each task not already finished; write records and the
    manifest.

    ``work`` must be importable (a module-level function) when ``threads`` > 1:
    the pool's processes receive it by reference. With ``provenance_base``
    (:func:`ageatlas.core.provenance.provenance` of the job), each table or
    map among a task's outputs gets its sidecar. ``reuse`` may be a function of the eid.
    Returns the manifest rows.
    """
    record_dir, log_dir = Path(record_dir), Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    exit_on_sigterm()
    digests = {t.eid: fingerprint(stage, settings, t.inputs) for t in tasks}
    rows: dict[str, dict] = {}
    todo = []
    for task in tasks:
        wanted = reuse(task.eid) if callable(reuse) else reuse
        if wanted and _reusable(record_dir / f"{task.eid}.json", digests[task.eid], task.outputs):
            log_path = str(log_dir / f"{task.eid}.log")
            rows[task.eid] = {"eid": task.eid, "status": REUSED, "seconds": 0.0, "error": ""}
            rows[task.eid]["log"] = log_path
        else:
            todo.append(task)
    log.info(
        "%s: %d participants, %d finished before (reused), %d to do on %d process(es)",
        stage,
        len(tasks),
        len(tasks) - len(todo),
        len(todo),
        min(max(threads, 1), max(len(todo), 1)),
    )
    results = _results(work, todo, log_dir, threads, provenance_base)
    for n, (task, row) in enumerate(results, start=1):
        info = row.pop("info")
        record = {**row, "stage": stage, "fingerprint": digests[task.eid], "info": info}
        _write_json(record_dir / f"{task.eid}.json", record)
        rows[task.eid] = row
        log.info(
            "%s: %d/%d participant %s %s in %.1f s%s",
            stage,
            n,
            len(todo),
            task.eid,
            row["status"],
            row["seconds"],
            f": {row['error']}" if row["error"] else "",
        )
    ordered = [rows[t.eid] for t in tasks]
    write_manifest(manifest, ordered)
    failed = [r for r in ordered if r["status"] == FAILED]
    if failed and len(failed) == len(ordered):
        raise BatchFailed(
            f"{stage}: every participant failed ({len(failed)}), e.g. {failed[0]['eid']}: "
            f"{failed[0]['error']} (log {failed[0].get('log', '')})"
        )
    return ordered


def run_for_rule(
    smk, work: Callable[..., object], tasks: Sequence[Task], settings: Mapping, pooled=True
):
    """:func:`run_batch` for a batch rule's job: records, logs and reuse from its params (see
    workflow/rules/common.smk), the manifest its output; one process per thread if ``pooled``,
    else all in this process (a model or atlas loaded once, on a GPU)."""
    from ageatlas.core import logs

    logs.to_file(smk.log[0])
    wildcards = {k: str(v) for k, v in smk.wildcards.items()}
    # From the config, not params: asking to redo must not rerun jobs by itself.
    base = provenance.provenance(smk.config, rule=smk.rule, wildcards=wildcards)
    models = provenance.job_models(smk)  # the checkpoint it reads, or its inputs' models
    if models:
        base["models"] = models
    options = smk.config["batch"]
    redo = {str(item) for item in smk.config["redo"]}
    if smk.rule in redo:
        log.info("%s: redo names this rule: every participant is redone", smk.rule)
    rows = run_batch(
        work,
        tasks,
        stage=smk.rule,
        settings=settings,
        record_dir=smk.params.records,
        log_dir=smk.params.logs,
        manifest=smk.output[0],
        threads=smk.threads if pooled else 1,
        reuse=lambda eid: options["reuse"] and smk.rule not in redo and eid not in redo,
        provenance_base=base,
    )
    provenance.record(smk)  # the manifest's own sidecar
    return rows


def write_manifest(path: str | Path, rows: Iterable[Mapping]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(
            handle, MANIFEST_COLUMNS, delimiter="\t", extrasaction="ignore", restval=""
        )
        writer.writeheader()
        writer.writerows(rows)


def _paths(items) -> list[str]:
    """Paths from a path, or nested lists of them (a Snakemake named input of one file is a
    string, not a list)."""
    if isinstance(items, (str, os.PathLike)):
        return [os.fspath(items)]
    return [path for item in items for path in _paths(item)]


def read_manifests(paths) -> list[dict]:
    """Every row of the given batch manifests (a path, or lists of paths)."""
    rows = []
    for path in _paths(paths):
        with open(path, newline="") as handle:
            rows.extend(dict(r, manifest=str(path)) for r in csv.DictReader(handle, delimiter="\t"))
    return rows


def failure_reason(row: Mapping) -> str:
    """What a failed manifest row says: the rule, the error and the participant's log."""
    return f"{Path(row['manifest']).parent.name} failed: {row['error']} (log {row['log']})"


def failures(manifests: Iterable[str | Path]) -> dict[str, str]:
    """eid -> what failed, for the participants the given batches could not finish."""
    return {row["eid"]: failure_reason(row) for row in _failed_rows(manifests)}


def _failed_rows(manifests) -> list[dict]:
    return [row for row in read_manifests(manifests) if row["status"] == FAILED]


def manifest_rows(paths: Iterable, manifests) -> list[tuple[str, dict]]:
    """(path, its participant's manifest row) for each per-participant path.

    Paths are matched to participants by file name ({eid}.npy, {eid}/, ...);
    one that no manifest lists is an error (the inputs do not match).
    """
    status = {r["eid"]: r for r in read_manifests(manifests)}
    pairs = []
    for path in paths:
        eid = eid_of_path(str(path).rstrip("/"))
        if eid not in status:
            raise ValueError(f"participant {eid} ({path}) is in no batch manifest given")
        pairs.append((str(path), status[eid]))
    return pairs


def finished(paths: Iterable[str], manifests: Iterable[str | Path]) -> list[str]:
    """The per-participant ``paths`` whose participant finished (done or reused) in ``manifests``;
    a participant that failed is left out with a warning naming it and its log."""
    kept = []
    for path, row in manifest_rows(paths, manifests):
        if row["status"] in (DONE, REUSED):
            kept.append(path)
        else:
            log.warning("participant %s left out: %s", row["eid"], failure_reason(row))
    return kept


def failure_table(manifests: Iterable[str | Path]):
    """The failed rows of ``manifests``: eid, rule, batch, error, log (pandas)."""
    import pandas as pd

    rows = [
        {
            "eid": row["eid"],
            "rule": Path(row["manifest"]).parent.name,
            "batch": Path(row["manifest"]).name.removesuffix(".tsv"),
            "error": row["error"],
            "log": row["log"],
        }
        for row in _failed_rows(manifests)
    ]
    return pd.DataFrame(rows, columns=["eid", "rule", "batch", "error", "log"])
