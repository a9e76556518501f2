"""Logging for workflow jobs: one log file per job, progress lines as work goes."""

from __future__ import annotations

import logging
import sys


def to_file(path: str | None, level: int = logging.INFO) -> None:
    """Send the package's log records to the job's log file (and stderr)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        handlers.append(logging.FileHandler(path, mode="w"))
    logging.basicConfig(
        level=level,
        handlers=handlers,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)
