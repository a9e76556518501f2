"""What files are now (path, size, mtime): the fingerprints that decide what reruns.

A batch job reuses a participant's finished work while the fingerprint of its
inputs holds (ageatlas.core.batch_run); the workflow gives a real cohort's
zips to Snakemake as one digest per batch rather than as 100,000 input files,
whose existence and mtimes Snakemake would check one by one, several times,
in every plan (docs/design.md, "Batches"; benchmarks/dag.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path


def file_state(path: str | Path) -> list:
    """[path, size, mtime in ns] of a file, or of every file in a folder, in order (a missing
    file: size and mtime None)."""
    target = Path(path)
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    states = []
    for file in files:
        try:
            stat = file.stat()
        except OSError:
            states.append([str(file), None, None])
        else:
            states.append([str(file), stat.st_size, stat.st_mtime_ns])
    return states


def digest(content) -> str:
    """SHA-256 of JSON-able content, keys sorted: the same content, the same digest."""
    text = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def state_digest(paths: Iterable[str | Path]) -> str:
    """One digest of the files' states: it changes when a file appears, goes, or is rewritten."""
    return digest([file_state(p) for p in paths])
