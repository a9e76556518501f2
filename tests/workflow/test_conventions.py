"""Workflow conventions checked in CI: snakemake --lint, snakefmt, and the rules' conda envs."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]


def test_snakemake_lint_is_clean():
    result = subprocess.run(
        [str(BIN / "snakemake"), "--lint", "--configfile", "config/demo.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Congratulations" in output, output[-4000:]


def test_the_workflow_has_one_checkpoint():
    """Chained checkpoints: when the first reruns and leaves the second up to date,
    Snakemake 9.27.1 runs a job that depends on the second with unresolved (<TBD>) inputs
    (reproduced with checkpoint a -> checkpoint b -> rule c whose input function calls
    checkpoints.b.get()). One checkpoint avoids it."""
    checkpoints = [
        (path.name, line.split()[1].rstrip(":"))
        for path in RULE_FILES
        for line in path.read_text().splitlines()
        if line.startswith("checkpoint ")
    ]
    assert checkpoints == [("cohort.smk", "cohort_table")], checkpoints


def test_python_is_ruff_formatted_and_clean():
    """ruff format and ruff check (pyproject.toml [tool.ruff]) over the whole tree."""
    for args in (["format", "--check", "."], ["check", "."]):
        result = subprocess.run(
            [str(BIN / "ruff"), *args], cwd=REPO, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_snakefmt_formatted():
    result = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "--diff", *map(str, RULE_FILES)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:] + "\nfix with: make fmt"


# ---- conda environments ------------------------------------------------------

PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s#;]+)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_pins() -> dict[str, str]:
    """requirements.txt pins plus the torch / torchvision pins of the Makefile."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    makefile = (REPO / "Makefile").read_text()
    for name in ("torch", "torchvision"):
        match = re.search(rf"\b{name}==([^\s]+)", makefile)
        assert match, f"the Makefile pins no {name}"
        pins[name] = match.group(1)
    return pins


def env_pins(env: dict) -> dict[str, str]:
    pins, loose = {}, []
    for dep in env["dependencies"]:
        specs = dep["pip"] if isinstance(dep, dict) else [dep]
        for spec in specs:
            if isinstance(dep, dict):
                match = PIN.match(spec)
            else:  # conda: name=version or name==version
                match = re.match(r"^([A-Za-z0-9_.\-]+)\s*==?\s*([^\s=]+)$", spec)
            if match:
                pins[normalise(match.group(1))] = match.group(2)
            elif spec != "pip":
                loose.append(spec)
    assert not loose, f"unpinned packages {loose}"
    return pins


ENVS = sorted((REPO / "envs").glob("*.yaml"))


@pytest.mark.parametrize("path", ENVS, ids=[p.name for p in ENVS])
def test_conda_env_parses_and_agrees_with_the_project_pins(path):
    env = yaml.safe_load(path.read_text())
    assert env["channels"] and env["dependencies"], path
    pins = env_pins(env)
    expected = project_pins()
    disagree = {
        name: (version, expected[name])
        for name, version in pins.items()
        if name in expected and version != expected[name]
    }
    assert not disagree, f"{path.name} pins (env, project) differ: {disagree}"
    unknown = sorted(set(pins) - set(expected) - {"python", "pip"})
    assert not unknown, f"{path.name} pins packages the project does not: {unknown}"
    # The env can run the package: every runtime dependency is in it.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = {
        normalise(re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0]) for d in project["dependencies"]
    }
    assert not needed - set(pins), (
        f"{path.name} lacks runtime dependencies {sorted(needed - set(pins))}"
    )
    # The same Python minor version as the project venv the tests run in.
    assert pins["python"] == f"{sys.version_info.major}.{sys.version_info.minor}", pins["python"]


def rule_blocks(path: Path):
    """(name, text) of each rule and checkpoint defined in a Snakefile (not `use rule`)."""
    lines = path.read_text().splitlines()
    header = re.compile(r"^(\s*)(?:rule|checkpoint)\s+(\w+)\s*:")
    for i, line in enumerate(lines):
        match = header.match(line)
        if not match:
            continue
        indent = len(match.group(1))
        body = []
        for following in lines[i + 1 :]:
            if (
                following.strip()
                and not following.lstrip().startswith("#")
                and len(following) - len(following.lstrip()) <= indent
            ):
                break
            body.append(following)
        yield match.group(2), "\n".join(body)


def test_every_rule_that_runs_code_names_an_existing_conda_env():
    problems, checked = [], 0
    for path in RULE_FILES:
        for name, body in rule_blocks(path):
            if not re.search(r"^\s*(script|shell|run|notebook|wrapper)\s*:", body, re.M):
                continue  # target rules (all) run nothing
            checked += 1
            match = re.search(r"^\s*conda:\s*\n\s*\"([^\"]+)\"", body, re.M)
            if not match:
                problems.append(f"{path.name}: rule {name} has no conda: directive")
            elif not (path.parent / match.group(1)).resolve().is_file():
                problems.append(
                    f"{path.name}: rule {name} names {match.group(1)}, which does not exist"
                )
            elif (path.parent / match.group(1)).resolve().parent != REPO / "envs":
                problems.append(f"{path.name}: rule {name}'s env is not under envs/")
    assert checked > 20 and not problems, problems


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent is a module, not a package: name is a function
        return False


def test_building_the_dag_imports_neither_torch_nor_deepali():
    """Every ageatlas module common.smk imports runs at DAG-build time, in every Snakemake process
    (each cluster job's too): importing torch there would cost seconds per job."""
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    modules = sorted(set(re.findall(r"^\s*from (ageatlas[\w.]*) import (\w+)", common, flags=re.M)))
    names = [
        f"{package}.{name}" if is_module(f"{package}.{name}") else package
        for package, name in modules
    ]
    assert "ageatlas.synthetic.participants" in names and "ageatlas.cohort.table" in names
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print(sorted({'torch', 'deepali'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", (names, result.stdout)
