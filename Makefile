# lra: Long Range Arena harness. `make help` lists the targets.
#   make sweep TASK=listops PRESET=smoke    every registered attention on ListOps, CPU-sized
#   make test                               the test suite (no network, CPU)

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# CUDA=12 installs the GPU build of jax (requirements/cuda.txt) into the venv.
CUDA ?=
TASK ?= listops
# smoke | lra_official | pytorch_lineage
PRESET ?= lra_official
# Comma-separated attention config names; empty = every registered attention runnable here.
ATTENTION ?=
# Seeds 0..SEEDS-1.
SEEDS ?= 1
# Hydra launcher: basic (runs in turn, in this process) | submitit_local (parallel local jobs)
# | submitit_slurm (a SLURM cluster; see README).
LAUNCHER ?= basic
# Extra Hydra overrides, e.g. ARGS="train.steps=100 logger=csv".
ARGS ?=
RESULTS ?= results/$(PRESET)

SEED_LIST = $(shell seq -s, 0 $$(( $(SEEDS) - 1 )))

# Benchmarks (docs/benchmarks.md). LENGTHS: comma-separated; MODE: encoder | layer | encoder,layer;
# DTYPE: float32 | bfloat16; BATCH: batch size(s). ATTENTION (above) picks the families.
LENGTHS ?= 1024,2048,4096,8192,16384
MODE ?= encoder,layer
DTYPE ?= float32
BATCH ?= 32
BENCH_ARGS ?=

.PHONY: help install sweep run data leaderboard test test-slow lock clean bench approx

help:
	@echo "make sweep TASK=listops PRESET=smoke   sweep all registered attentions (CPU-sized preset)"
	@echo "make sweep TASK=listops                the official LRA protocol (meant for a GPU)"
	@echo "make run TASK=listops ATTENTION=linear PRESET=smoke   one run"
	@echo "make data TASK=listops [PRESET=...]    prepare the task's token cache only"
	@echo "make leaderboard [PRESET=...]          rebuild and print results/<preset>/leaderboard.md"
	@echo "make test | make test-slow             test suite | including slow tests"
	@echo "make install [CUDA=12]                 create .venv from requirements/lock.txt"
	@echo "make bench [LENGTHS=.. MODE=.. DTYPE=.. BATCH=.. ATTENTION=..]  time/memory vs length -> results/bench/"
	@echo "make approx [LENGTHS=.. ATTENTION=..]  approximation error vs length and budget -> results/bench/"

$(VENV)/.installed: requirements/lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@if [ -n "$(CUDA)" ]; then $(PY) -m pip install --quiet -r requirements/cuda.txt; fi
	touch $@

install: $(VENV)/.installed

sweep: install
	@attentions="$(ATTENTION)"; \
	if [ -z "$$attentions" ]; then attentions=$$($(PY) -m lra.registry --runnable) || exit 1; fi; \
	echo "sweep: task=$(TASK) protocol=$(PRESET) attentions=$$attentions seeds=$(SEED_LIST)"; \
	$(PY) -m lra.train --multirun task=$(TASK) protocol=$(PRESET) attention=$$attentions \
		seed=$(SEED_LIST) hydra/launcher=$(LAUNCHER) $(ARGS)

run: install
	$(PY) -m lra.train task=$(TASK) protocol=$(PRESET) attention=$(or $(ATTENTION),softmax) $(ARGS)

data: install
	$(PY) -m lra.prepare_data task=$(TASK) protocol=$(PRESET) $(ARGS)

leaderboard: install
	$(PY) -m lra.leaderboard --results-dir $(RESULTS)

bench: install
	$(PY) -m lra.bench.efficiency --lengths $(LENGTHS) --mode $(MODE) --dtype $(DTYPE) --batch $(BATCH) \
		$(if $(ATTENTION),--attention $(ATTENTION)) $(BENCH_ARGS)

# approx sweeps LENGTHS up to 4096 unless given (its O(n^2) targets are computed on the host device).
approx: install
	$(PY) -m lra.bench.approximation --lengths $(if $(filter command line environment,$(origin LENGTHS)),$(LENGTHS),256,512,1024,2048,4096) \
		$(if $(ATTENTION),--attention $(ATTENTION)) $(BENCH_ARGS)

# Tests run in parallel worker processes (pytest-xdist); PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= auto
test: install
	WANDB_MODE=offline $(PY) -m pytest -q -n $(PYTEST_WORKERS)

test-slow: install
	WANDB_MODE=offline $(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "slow or not slow"

# Re-resolve the pinned set after editing requirements/base.in.
lock:
	rm -rf /tmp/lra-lock-venv && $(PYTHON) -m venv /tmp/lra-lock-venv
	/tmp/lra-lock-venv/bin/pip install --quiet -r requirements/base.in
	{ echo "# Full resolved dependency set for lra (CPU). Generated from requirements/base.in by 'make lock'."; \
	  echo "# Python 3.11, Linux x86-64. Do not edit by hand."; \
	  /tmp/lra-lock-venv/bin/pip freeze; } > requirements/lock.txt

clean:
	rm -rf outputs multirun .pytest_cache
