# The two commands a new user needs (README): `make demo` and `make test`.
# Each creates the project venv on first use and installs the pinned stack.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: venv demo test test-slurm lint fmt clean-demo

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

## Whole pipeline on the embedded synthetic cohort (config/demo.yaml).
demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml
	@$(BIN)/python -m ageatlas.cli where --configfile config/demo.yaml

## Unit tests + workflow tests on tiny synthetic data.
test: $(STAMP)
	$(BIN)/python -m pytest tests

## The SLURM profile on a real one-node SLURM cluster started on this machine
## (root: installs Debian's slurm packages, see tests/slurm/cluster.sh).
test-slurm: $(STAMP)
	@bash tests/slurm/cluster.sh start || { \
		echo "make test-slurm: FAILED - the SLURM test cluster could not be started (cluster.sh's error above)" >&2; \
		exit 1; }
	$(BIN)/python -m pytest tests/slurm

## Workflow and Python style (CI runs the same checks in tests/workflow/test_conventions.py).
lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

fmt: $(STAMP)
	$(BIN)/snakefmt Snakefile workflow/rules
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean-demo:
	rm -rf results/demo logs/demo
