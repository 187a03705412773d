# rsgeo_prune — set-up, demo, tests, benchmarks.
# `make install` is idempotent: it reinstalls only when pyproject.toml (or this Makefile) changed.
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# torch/torchvision: the only builds on this machine's disk; an unpinned torch downloads gigabytes.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_DIR := catalogs/demo

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS) -e ".[embed,test,notebooks,bench]"
	touch $(STAMP)

demo: install
	$(PY) -m rsgeo_prune.demo --out $(DEMO_DIR)

test: install
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/tiling.py
	$(PY) benchmarks/entropy.py
	$(PY) benchmarks/select.py
	$(PY) benchmarks/scale.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
