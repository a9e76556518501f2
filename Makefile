# The two commands a new user needs (README): `make demo` and `make test`.
# Each creates the project venv on first use and installs the pinned stack.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: venv demo test lint fmt clean-demo

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

lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	$(BIN)/snakefmt --check Snakefile workflow/rules

fmt: $(STAMP)
	$(BIN)/snakefmt Snakefile workflow/rules

clean-demo:
	rm -rf results/demo logs/demo
