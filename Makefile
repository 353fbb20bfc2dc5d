# meminf: `make demo` and `make test` work on a fresh machine (they create .venv and install into it).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_SEEDS ?= 0..63
DEMO_DIR ?= outputs/fz_mnist

.PHONY: help setup demo test test-slow test-browser test-all lint report clean gpu-check

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed  ## create .venv and install meminf (editable) with the pinned torch

demo: setup  ## sweep fz_mnist (64 seeds) on the embedded MNIST-5k, aggregate, report (a few minutes, CPU)
	@echo "demo: training seeds $(DEMO_SEEDS) of experiment fz_mnist (MLP 784-512-256-10 on MNIST-5k)"
	$(PY) -m src.run -m experiment=fz_mnist seed=$(DEMO_SEEDS)
	$(PY) -m src.estimate $(DEMO_DIR)
	$(PY) -m src.report $(DEMO_DIR)
	@echo "demo: records in $(DEMO_DIR)/seed=*/record.npz; estimates, CSVs and gallery.png in $(DEMO_DIR)/estimates/"
	@echo "demo: the report: $(DEMO_DIR)/report/index.html"

test: setup  ## the test suite without the slow tests (CPU, a few minutes)
	$(PY) -m pytest -q -m "not slow"

test-slow: setup  ## only the slow tests (end-to-end sweeps, statistical checks)
	$(PY) -m pytest -q -m slow

test-browser: setup  ## the HTML report in headless Chromium; fails (not skips) without a chromium binary
	MEMINF_REQUIRE_BROWSER=1 $(PY) -m pytest -q tests/test_browser.py

test-all: setup  ## every test
	$(PY) -m pytest -q

gpu-check: setup  ## on one GPU (< 5 min): vmap vs grouped-conv packs, bf16, channels_last, compile (issue 13)
	$(PY) benchmarks/gpu_check.py --device cuda --out outputs/gpu_check/results.jsonl

report: setup  ## the HTML report of the demo sweep (after make demo): <demo dir>/report/index.html
	$(PY) -m src.report $(DEMO_DIR)

lint: setup  ## ruff
	$(VENV)/bin/ruff check .

clean:  ## remove outputs (keeps .venv)
	rm -rf outputs/*/ .pytest_cache
