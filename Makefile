# snnkern: `make test` and `make demo` set themselves up on a fresh machine (venv + pip install).
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-8)

# Newest Python >= 3.12 that actually runs (pyenv shims for unselected versions fail), else python3.
PYTHON ?= $(shell bash tools/find_python.sh)

.PHONY: all venv test test-fast lint demo bench bench-quick clean

all: test

$(STAMP):
	@echo "using $(PYTHON) ($$($(PYTHON) --version 2>&1))"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,demo,nir]"
	@touch $@

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(PY) -m ruff check snnkern kernels bench tests tools

test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow" -p no:cacheprovider

demo: $(STAMP)
	$(PY) -m snnkern.demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) -m bench.run --tiers cpu-small,cpu,cpu-long,cpu-rec

bench-quick: $(STAMP)
	$(PY) -m bench.run --tiers cpu-small

clean:
	rm -rf $(VENV) build *.egg-info demo_out .pytest_cache
