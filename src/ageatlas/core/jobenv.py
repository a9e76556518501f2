"""The environment that workflow jobs inherit from the main Snakemake process."""

from __future__ import annotations

import os


def export_source_path(src_dir: str) -> None:
    """Let jobs import ageatlas from this checkout, also inside the rules' conda envs.

    The envs hold the package's dependencies; the code comes from the
    checkout, so a job always runs the code its DAG was built with. Local
    jobs inherit os.environ; SLURM jobs get it through sbatch --export=ALL.
    """
    src_dir = os.path.abspath(src_dir)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src_dir not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([src_dir, *paths])
