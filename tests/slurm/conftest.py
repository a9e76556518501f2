"""SLURM cluster tests: opt-in, and never skipped once selected.

They start a real one-node SLURM cluster (tests/slurm/cluster.sh: root,
Debian packages, daemons), so a plain ``pytest tests`` (``make test``) leaves
them out and says so in its summary. They run when selected explicitly
(``pytest tests/slurm``, or a file or test in it) or with
``AGEATLAS_SLURM_TESTS=1``. Once selected, a cluster that cannot be started
is an error carrying cluster.sh's message, never a skip.
"""

import os
from pathlib import Path

import pytest
from slurm_harness import ClusterError, start_cluster

HERE = Path(__file__).resolve().parent
_left_out: list[str] = []


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slurm: needs the real SLURM cluster of tests/slurm/cluster.sh"
    )


def _inside(path: Path) -> bool:
    return path == HERE or HERE in path.parents


def _explicitly_selected(config) -> bool:
    for arg in config.args:
        path = Path(config.invocation_params.dir, str(arg).split("::")[0]).resolve()
        if _inside(path):
            return True
    return False


def pytest_collection_modifyitems(config, items):
    if os.environ.get("AGEATLAS_SLURM_TESTS") == "1" or _explicitly_selected(config):
        return
    ours = [item for item in items if _inside(Path(str(item.fspath)).resolve())]
    if ours:
        config.hook.pytest_deselected(items=ours)
        items[:] = [item for item in items if item not in ours]
        _left_out.extend(item.nodeid for item in ours)


def pytest_terminal_summary(terminalreporter):
    if _left_out:
        terminalreporter.write_line(
            f"tests/slurm: {len(_left_out)} SLURM cluster tests not run "
            f"(they start a real SLURM cluster as root); "
            "run them with `pytest tests/slurm` or AGEATLAS_SLURM_TESTS=1",
            yellow=True,
        )


@pytest.fixture(scope="session")
def slurm_cluster():
    """The cluster of cluster.sh, started (or found running) once per session."""
    try:
        return start_cluster()
    except ClusterError as exc:
        pytest.fail(f"the SLURM test cluster could not be started:\n{exc}", pytrace=False)
