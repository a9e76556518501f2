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


def record(smk, outputs: Iterable | None = None) -> list[Path]:
    """Write a sidecar for every table and map among a Snakemake job's outputs (or ``outputs``).

    Call it once, at the end of a workflow script, with its ``snakemake``
    object. Returns the sidecar paths.
    """
    targets = [p for p in _flat(smk.output if outputs is None else outputs) if is_result(p)]
    if not targets:
        return []
    wildcards = {k: str(v) for k, v in smk.wildcards.items()}
    base = provenance(smk.config, _flat(smk.input), rule=smk.rule, wildcards=wildcards)
    return [write_sidecar(p, base) for p in targets]


def read_sidecar(path: str | os.PathLike) -> dict:
    """The provenance record of an output (given the output's path or its sidecar's)."""
    path = os.fspath(path)
    sidecar = Path(path) if path.endswith(SIDECAR_SUFFIX) else sidecar_path(path)
    return json.loads(sidecar.read_text())
