"""Provenance of result tables and maps: a JSON sidecar next to each.

Every workflow script that writes a table (.tsv, .csv, .md) or a map
(.nii.gz, .nii) ends with one call, ``provenance.record(snakemake)``, which
writes ``<output>.prov.json`` beside each such output: the package version,
the git commit of the code that ran (``"unknown"`` outside a git checkout),
whether that checkout had uncommitted changes, a hash of the run's
validated config, the rule and wildcards, and every input with its size,
modification time and, for files up to 1 MiB, its SHA-256.

Sidecars are not declared as rule outputs: the DAG (and the dry run at
100,000 participants) stays as it is, and a partial rerun rewrites the
sidecars of exactly the outputs it rewrites.

The outputs of a model name it: ``models``, one entry per age model behind
the output, with its checkpoint's path and SHA-256, whether it was trained
here or given (``model.checkpoint``, then also the given file's path) and,
once bias correction has run, where its coefficients came from. A job that
reads or writes a checkpoint (an input or output named ``checkpoint``)
describes it; every other job copies the entries of its inputs' sidecars,
so predictions, Table 1, Grad-CAM maps, warped maps and population maps all
say which model they rest on. The SHA-256 of a checkpoint is computed once
per path, size and modification time and kept beside it in
``<checkpoint>.model.json``.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from ageatlas import __version__

SIDECAR_SUFFIX = ".prov.json"
MODEL_RECORD_SUFFIX = ".model.json"
TRAINED_HERE = "trained here"
GIVEN = "given"
RESULT_SUFFIXES = (".tsv", ".csv", ".md", ".nii.gz", ".nii")
HASH_LIMIT = 1 << 20  # inputs up to this many bytes get a SHA-256
UNKNOWN = "unknown"


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}{SIDECAR_SUFFIX}")


def is_result(path: str | os.PathLike) -> bool:
    """A table or a map: the outputs that get a sidecar."""
    return os.fspath(path).endswith(RESULT_SUFFIXES)


def config_hash(config: Mapping) -> str:
    """SHA-256 of the config as canonical JSON (sorted keys): equal configs, equal hashes."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _git(directory: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=8)
def git_state(directory: str | os.PathLike | None = None) -> dict:
    """Commit of the checkout holding ``directory`` (default: this package) and whether it is dirty.

    Outside a git checkout (an installed wheel, a copied tree) or without
    git, the commit is ``"unknown"`` and ``dirty`` is None; never an error.
    """
    directory = Path(directory) if directory is not None else Path(__file__).resolve().parent
    commit = _git(directory, "rev-parse", "HEAD")
    if not commit:
        return {"commit": UNKNOWN, "dirty": None}
    status = _git(directory, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _mtime(stat: os.stat_result) -> str:
    return dt.datetime.fromtimestamp(stat.st_mtime, dt.timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_file(path: str | os.PathLike) -> dict:
    """Path, size, modification time (UTC) and, for small files, SHA-256; a folder counts its
    files."""
    path = Path(path)
    entry: dict = {"path": os.fspath(path)}
    try:
        stat = path.stat()
    except OSError:
        entry["missing"] = True
        return entry
    entry["mtime"] = _mtime(stat)
    if path.is_dir():
        entry["directory"] = True
        entry["files"] = sum(1 for p in path.rglob("*") if p.is_file())
        return entry
    entry["size"] = stat.st_size
    if stat.st_size <= HASH_LIMIT:
        entry["sha256"] = sha256_file(path)
    return entry


def provenance(
    config: Mapping,
    inputs: Iterable = (),
    *,
    rule: str | None = None,
    wildcards: Mapping | None = None,
) -> dict:
    """The provenance record shared by all outputs of one job."""
    git = git_state()
    return {
        "package": "ageatlas",
        "version": __version__,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "config_sha256": config_hash(config),
        "rule": rule,
        "wildcards": dict(wildcards or {}),
        "inputs": [describe_file(p) for p in inputs],
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "host": platform.node(),
    }


# ---- the model behind an output ----------------------------------------------


def model_record_path(checkpoint: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(checkpoint)}{MODEL_RECORD_SUFFIX}")


def _write_json(path: Path, content: Mapping) -> None:
    # A unique temporary name: many jobs may refresh the same record at once.
    tmp = path.with_name(f".{os.getpid()}.{path.name}.tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    tmp.replace(path)


def write_model_record(
    checkpoint: str | os.PathLike,
    source: str,
    *,
    given: str | os.PathLike | None = None,
    sha256: str | None = None,
) -> dict:
    """Record beside ``checkpoint`` where it came from (`TRAINED_HERE` or `GIVEN`, then the
    given file) and its SHA-256 (computed unless given), for its current size and mtime."""
    if source not in (TRAINED_HERE, GIVEN):
        raise ValueError(f"a model's source is {TRAINED_HERE!r} or {GIVEN!r}, not {source!r}")
    stat = os.stat(checkpoint)
    record = {
        "checkpoint": os.fspath(checkpoint),
        "sha256": sha256 or sha256_file(checkpoint),
        "source": source,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }
    if given is not None:
        record["given"] = os.path.abspath(given)
    _write_json(model_record_path(checkpoint), record)
    _cached_model_record.cache_clear()
    return record


@functools.lru_cache(maxsize=8)
def _cached_model_record(checkpoint: str, size: int, mtime_ns: int) -> dict:
    stored: dict = {}
    try:
        stored = json.loads(model_record_path(checkpoint).read_text())
    except (OSError, ValueError):
        pass
    if stored.get("size") == size and stored.get("mtime_ns") == mtime_ns and stored.get("sha256"):
        return stored
    # No record (a checkpoint trained before records were kept) or a stale one (the file changed
    # since): hash it again, keeping where it came from.
    given = stored.get("given")
    source = stored.get("source", TRAINED_HERE)
    try:
        return write_model_record(checkpoint, source, given=given)
    except OSError:  # a read-only results folder: hash, but keep nothing
        return {
            "checkpoint": checkpoint,
            "sha256": sha256_file(checkpoint),
            "source": source,
            "size": size,
            "mtime_ns": mtime_ns,
            **({"given": given} if given else {}),
        }


def model_record(checkpoint: str | os.PathLike) -> dict:
    """A checkpoint's entry in ``models``: path, SHA-256, source (trained here or given) and,
    if given, the given file's path; the hash is computed once per path, size and mtime."""
    stat = os.stat(checkpoint)
    record = _cached_model_record(os.fspath(checkpoint), stat.st_size, stat.st_mtime_ns)
    return {key: value for key, value in record.items() if key != "mtime_ns"}


def install_checkpoint(given: str | os.PathLike, checkpoint: str | os.PathLike) -> dict:
    """Copy a given checkpoint to the run's ``checkpoint`` path (atomically), hashing it on the
    way, and record it as given."""
    from ageatlas.core.files import atomic_write

    digest = hashlib.sha256()

    def copy(target) -> None:
        with open(given, "rb") as source:
            for block in iter(lambda: source.read(1 << 20), b""):
                digest.update(block)
                target.write(block)

    atomic_write(checkpoint, copy)
    return write_model_record(checkpoint, GIVEN, given=given, sha256=digest.hexdigest())


def _model_key(model: Mapping) -> tuple:
    return (model.get("checkpoint"), model.get("sha256"))


def merge_models(models: Iterable[Mapping]) -> list[dict]:
    """One entry per checkpoint (path and hash), in first-seen order; entries of the same one are
    merged (an input's bias correction joins a map's model)."""
    merged: dict[tuple, dict] = {}
    for model in models:
        key = _model_key(model)
        merged[key] = {**model, **merged[key]} if key in merged else dict(model)
    return list(merged.values())


def _named(files, name: str):
    """The file(s) a Snakemake job names ``name`` among its inputs or outputs, or None."""
    try:
        value = getattr(files, name)
    except AttributeError:
        return None
    return value or None


def job_models(smk) -> list[dict]:
    """The models behind a job's outputs: the checkpoint it reads or writes, else its inputs'."""
    models = []
    for files in (smk.input, smk.output):
        checkpoint = _named(files, "checkpoint")
        if checkpoint is not None and os.path.isfile(os.fspath(checkpoint)):
            models.append(model_record(checkpoint))
    if models:
        return merge_models(models)
    for path in _flat(smk.input):
        if not is_result(path):
            continue
        try:
            models.extend(read_sidecar(path).get("models", []))
        except (OSError, ValueError):  # an input without a sidecar (a given atlas, the phenotypes)
            continue
    return merge_models(models)


def write_sidecar(output: str | os.PathLike, record: Mapping) -> Path:
    """``<output>.prov.json``: ``record`` plus the output's own size, time and (small) hash."""
    sidecar = sidecar_path(output)
    content = dict(record, output=describe_file(output))
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    tmp.replace(sidecar)
    return sidecar


def _flat(paths) -> list[str]:
    out = []
    for p in paths:
        if isinstance(p, (list, tuple)):
            out.extend(_flat(p))
        else:
            out.append(os.fspath(p))
    return out


def record(
    smk, outputs: Iterable | None = None, *, bias_correction: Mapping | None = None
) -> list[Path]:
    """Write a sidecar for every table and map among a Snakemake job's outputs (or ``outputs``).

    Call it once, at the end of a workflow script, with its ``snakemake``
    object. The sidecars name the job's models (`job_models`); the bias
    correction job passes where its coefficients came from
    (``bias_correction``), which joins each model. Returns the sidecar paths.
    """
    targets = [p for p in _flat(smk.output if outputs is None else outputs) if is_result(p)]
    if not targets:
        return []
    wildcards = {k: str(v) for k, v in smk.wildcards.items()}
    base = provenance(smk.config, _flat(smk.input), rule=smk.rule, wildcards=wildcards)
    models = job_models(smk)
    if bias_correction is not None:
        models = [{**model, "bias_correction": dict(bias_correction)} for model in models]
    if models:
        base["models"] = models
    return [write_sidecar(p, base) for p in targets]


def read_sidecar(path: str | os.PathLike) -> dict:
    """The provenance record of an output (given the output's path or its sidecar's)."""
    path = os.fspath(path)
    sidecar = Path(path) if path.endswith(SIDECAR_SUFFIX) else sidecar_path(path)
    return json.loads(sidecar.read_text())
