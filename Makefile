# rsgeo_prune — set-up, demo, tests, benchmarks.
# `make install` is idempotent: it reinstalls only when pyproject.toml (or this Makefile) changed.
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# torch/torchvision: the only builds on this machine's disk; an unpinned torch downloads gigabytes.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Leaflet (npm) is inlined into the offline map HTML; Debian's chromium renders it in the map test.
LEAFLET    := leaflet@1.9.4
NPM_DIR    := $(VENV)/share/rsgeo_prune
DEMO_DIR := catalogs/demo

.PHONY: install demo lint test test-fast bench bench-train clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS) -e ".[embed,train,test,notebooks,bench,stac,torchgeo]"
	npm install --silent --no-save --no-audit --no-fund --prefix $(NPM_DIR) $(LEAFLET)
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
		echo "note: Debian's chromium is not installed (needs root): the browser test will be skipped"
	touch $(STAMP)

demo: install
	$(PY) -m rsgeo_prune.demo --out $(DEMO_DIR)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install
	$(PY) -m pytest

# the inner loop: everything but the tests marked slow
test-fast: install
	$(PY) -m pytest -m "not slow"

bench: install
	$(PY) benchmarks/tiling.py
	$(PY) benchmarks/entropy.py
	$(PY) benchmarks/selection.py
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/dedup.py

# the training wing: data throughput, DiT step time (and MFU on a GPU), then the long runs:
# the VAE quality run (60 min on one CPU core) and the convergence experiment (<= 40 min on 2 cores)
bench-train: install
	$(PY) benchmarks/train_data.py
	$(PY) benchmarks/train_dit.py
	$(PY) benchmarks/vae.py --minutes 60 --threads 1
	$(PY) benchmarks/convergence.py --config cpu

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
