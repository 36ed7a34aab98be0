# snnkern: `make test` and `make demo` set themselves up on a fresh machine (venv + pip install).
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-8)

# Newest Python >= 3.12 that actually runs (pyenv shims for unselected versions fail), else python3.
PYTHON ?= $(shell bash tools/find_python.sh)

.PHONY: all venv test test-fast test-gpu-compile lint demo bench bench-quick bench-micro clean

all: test

$(STAMP):
	@echo "using $(PYTHON) ($$($(PYTHON) --version 2>&1))"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,demo,nir]"
	@touch $@

venv: $(STAMP)

# gpu_compile tests run in test-gpu-compile (they skip without the CUDA plugin anyway).
# pytest-xdist: TEST_WORKERS processes, each test file whole on one of them (--dist loadfile: a file's
# shared fixtures and compiled models are built once); docs/testing.md "How the suite stays fast".
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not gpu_compile" -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check snnkern kernels bench tests tools

test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow and not gpu_compile" -p no:cacheprovider

# Every Pallas kernel and the bench models' training steps compiled for an H200 / H100 and a TPU
# v5e on this machine (no accelerator needed): installs the CUDA plugin + ptxas into the venv and
# libtpu beside it first (tools/install_gpu_compile.sh); a part that cannot be installed makes its
# tests skip with the reason.
test-gpu-compile: $(STAMP)
	@out=$$(bash tools/install_gpu_compile.sh $(PY)); echo "$$out"; \
	export SNNKERN_GPU_COMPILE_INSTALL_ERROR="$$(echo "$$out" | sed -n 's/^cannot install gpu: //p' | tail -1)"; \
	export SNNKERN_TPU_COMPILE_INSTALL_ERROR="$$(echo "$$out" | sed -n 's/^cannot install tpu: //p' | tail -1)"; \
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -p no:cacheprovider -rs -m gpu_compile tests/test_gpu_compile.py tests/test_gpu_compile_checkpoint.py

demo: $(STAMP)
	$(PY) -m snnkern.demo $(DEMO_ARGS)

# the spyx anchor rows need the `peers` extra; where it cannot be installed they are skipped with the reason
bench: $(STAMP)
	@$(PY) -m pip install -q -e ".[peers]" || echo "[bench] could not install spyx: its rows are skipped with the reason"
	$(PY) -m bench.run --tiers cpu-small,cpu,cpu-long,cpu-rec,cpu-recmlp,cpu-conv,cpu-mem

# pytest-benchmark suite of the loops and kernels (~1 min), for run-to-run regressions:
# make bench-micro MICRO_ARGS=--benchmark-autosave, later MICRO_ARGS=--benchmark-compare
bench-micro: $(STAMP)
	@$(PY) -c "import pytest_benchmark" 2>/dev/null || $(PY) -m pip install -q -e ".[bench]"
	$(PY) -m pytest -q -p no:cacheprovider bench/micro_suite $(MICRO_ARGS)

bench-quick: $(STAMP)
	$(PY) -m bench.run --tiers cpu-small

clean:
	rm -rf $(VENV) build *.egg-info demo_out .pytest_cache
