# meminf: `make demo` and `make test` work on a fresh machine (they create .venv and install into it).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_SEEDS ?= 0..63
DEMO_DIR ?= outputs/fz_mnist

.PHONY: help setup demo test test-slow test-all lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed  ## create .venv and install meminf (editable) with the pinned torch

demo: setup  ## sweep fz_mnist (64 seeds) on the embedded MNIST-5k, then aggregate (a few minutes, CPU)
	@echo "demo: training seeds $(DEMO_SEEDS) of experiment fz_mnist (MLP 784-512-256-10 on MNIST-5k)"
	$(PY) -m src.run -m experiment=fz_mnist seed=$(DEMO_SEEDS)
	$(PY) -m src.estimate $(DEMO_DIR)
	@echo "demo: records in $(DEMO_DIR)/seed=*/record.npz; estimates, CSVs and gallery.png in $(DEMO_DIR)/estimates/"

test: setup  ## the test suite without the slow tests (CPU, a few minutes)
	$(PY) -m pytest -q -m "not slow"

test-slow: setup  ## only the slow tests (end-to-end sweeps, statistical checks)
	$(PY) -m pytest -q -m slow

test-all: setup  ## every test
	$(PY) -m pytest -q

lint: setup  ## ruff
	$(VENV)/bin/ruff check .

clean:  ## remove outputs (keeps .venv)
	rm -rf outputs/*/ .pytest_cache
