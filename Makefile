# lra: Long Range Arena harness. `make help` lists the targets.
#   make sweep TASK=listops PRESET=smoke    every registered attention on ListOps, CPU-sized
#   make test                               the test suite (no network, CPU)
#   make install CUDA=12                    the GPU build of jax (CUDA=13, TPU=1); docs/scaling.md

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# The JAX variant `make install` puts into the venv: CUDA=12 | CUDA=13 (requirements/cuda12.txt,
# cuda13.txt) or TPU=1 (requirements/tpu.txt); neither: CPU. Other targets keep the installed variant.
CUDA ?=
TPU ?=
# A folder of wheels made by `make wheelhouse` (on a machine with network): `make install
# WHEELHOUSE=<dir>` installs from it alone, without network (docs/scaling.md). For `make wheelhouse`
# it is the folder written (default: wheelhouse/). WHEEL_PYTHON / WHEEL_PLATFORM collect for
# another machine, e.g. WHEEL_PYTHON=3.12 WHEEL_PLATFORM=manylinux_2_28_x86_64.
WHEELHOUSE ?=
WHEEL_PYTHON ?=
WHEEL_PLATFORM ?=
$(if $(filter-out 12 13,$(CUDA)),$(error CUDA=$(CUDA): use CUDA=12 or CUDA=13 (requirements/cuda12.txt, requirements/cuda13.txt)))
$(if $(and $(CUDA),$(TPU)),$(error give CUDA=$(CUDA) or TPU=$(TPU), not both))
STAMP := $(VENV)/.installed
# The stamp holds the installed variant (cpu | cuda12 | cuda13 | tpu); an empty stamp is a CPU install.
INSTALLED_VARIANT := $(or $(shell head -n1 $(STAMP) 2>/dev/null),$(if $(wildcard $(STAMP)),cpu))
REQUESTED_VARIANT := $(if $(CUDA),cuda$(CUDA),$(if $(TPU),tpu))
# `make install` / `make wheelhouse`: the requested variant, else CPU. Other targets: the requested
# one, else the installed one.
VARIANT := $(or $(REQUESTED_VARIANT),$(if $(filter install wheelhouse,$(MAKECMDGOALS)),cpu,$(or $(INSTALLED_VARIANT),cpu)))
VARIANT_REQUIREMENTS := $(if $(filter-out cpu,$(VARIANT)),requirements/$(VARIANT).txt)
EXPECT_BACKEND := $(if $(filter cuda%,$(VARIANT)),gpu,$(VARIANT))
ACCELERATOR_PACKAGES := jax-cuda12-plugin jax-cuda12-pjrt jax-cuda13-plugin jax-cuda13-pjrt libtpu
PIP_INSTALL = $(PY) -m pip install --quiet --disable-pip-version-check $(if $(WHEELHOUSE),--no-index --find-links $(abspath $(WHEELHOUSE)))
# Comma-separated task names; a sweep runs every attention x task x seed.
TASK ?= listops
# smoke | lra_official | pytorch_lineage. `make` targets are the real sweeps, so lra_official; a bare
# `python -m lra.train` defaults to smoke instead (configs/config.yaml says why).
PRESET ?= lra_official
# Comma-separated attention config names; empty = every registered attention runnable here.
ATTENTION ?=
# Seeds 0..SEEDS-1: 3 (mean ± std on the leaderboard), 1 for the smoke preset (its numbers mean nothing).
SEEDS ?= $(if $(filter smoke,$(PRESET)),1,3)
# Hydra launcher: basic (runs in turn, in this process) | submitit_local (parallel local jobs)
# | submitit_slurm (a SLURM cluster). They select configs/hydra/launcher/{local_parallel,slurm}.yaml,
# which extend the submitit plugin's configs of those names (docs/leaderboard.md).
LAUNCHER ?= basic
LAUNCHER_CONFIG_submitit_local := local_parallel
LAUNCHER_CONFIG_submitit_slurm := slurm
LAUNCHER_CONFIG = $(or $(LAUNCHER_CONFIG_$(LAUNCHER)),$(LAUNCHER))
# A folder with your own attention(s): <dir>/attention/<name>.yaml and the Python module its
# _target_ names (importable from <dir>). See docs/new_kernel.md.
KERNEL_DIR ?=
KERNEL_ENV = $(if $(KERNEL_DIR),LRA_KERNEL_DIR=$(abspath $(KERNEL_DIR)) PYTHONPATH=$(abspath $(KERNEL_DIR))$${PYTHONPATH:+:$$PYTHONPATH})
KERNEL_ARGS = $(if $(KERNEL_DIR),'hydra.searchpath=[file://$(abspath $(KERNEL_DIR))]')
# Extra Hydra overrides, e.g. ARGS="train.steps=100 logger=csv".
ARGS ?=
# make leaderboard: empty = every protocol under results/ plus the combined page; or one folder.
RESULTS ?=
# make reproduce: a published table (python -m lra.reproduce --list) and extra flags (--dry-run, --reuse-only).
TABLE ?= lra_table1
REPRODUCE_ARGS ?=

SEED_LIST = $(shell seq -s, 0 $$(( $(SEEDS) - 1 )))

# Benchmarks (docs/benchmarks.md). LENGTHS: comma-separated; MODE: encoder | layer | encoder,layer;
# DTYPE: float32 | bfloat16; BATCH: batch size(s). ATTENTION (above) picks the families.
LENGTHS ?= 1024,2048,4096,8192,16384
MODE ?= encoder,layer
DTYPE ?= float32
BATCH ?= 32
BENCH_ARGS ?=

.PHONY: help install wheelhouse lock-variants FORCE sweep run data leaderboard reproduce check-kernel browser bench bench-step bench-versus approx test test-slow lock clean

help:
	@echo "make sweep TASK=listops PRESET=smoke   sweep all registered attentions (CPU-sized preset)"
	@echo "make sweep TASK=listops                the official LRA protocol (meant for a GPU)"
	@echo "make run TASK=listops ATTENTION=linear PRESET=smoke   one run"
	@echo "make data TASK=listops [PRESET=...]    prepare the task's token cache only"
	@echo "make data TASK=text|retrieval|image    download (resumable) and prepare; see docs/data.md"
	@echo "make sweep TASK=listops,text ATTENTION=softmax,linear SEEDS=3 LAUNCHER=submitit_local"
	@echo "make sweep TASK=listops ATTENTION=my_kernel,softmax KERNEL_DIR=path/to/my_kernels   your own attention"
	@echo "make leaderboard [RESULTS=results/smoke]   rebuild results/*/leaderboard.{md,html} + plots, results/leaderboard.*"
	@echo "make reproduce TABLE=lra_table1|skyformer_table1|nystromformer_table1 [REPRODUCE_ARGS=--dry-run]   measured vs published"
	@echo "make check-kernel ATTENTION=my_kernel [KERNEL_DIR=my_kernels]   a kernel's report card: contract checks, memory, error"
	@echo "make browser                           install Debian's chromium for the leaderboard page test"
	@echo "make test | make test-slow             test suite | including slow tests"
	@echo "make install [CUDA=12|13 | TPU=1] [WHEELHOUSE=dir]   .venv from requirements/lock.txt (+ the variant's pins); shows the devices"
	@echo "make wheelhouse [CUDA=12|13 | TPU=1] [WHEELHOUSE=dir]  every wheel for an install without network"
	@echo "make bench [LENGTHS=.. MODE=.. DTYPE=.. BATCH=.. ATTENTION=..]  time/memory vs length -> results/bench/"
	@echo "make bench-step PRESET=pytorch_lineage TASK=listops [ATTENTION=..]  training-step time per attention -> results/bench/"
	@echo "make bench-versus AUTHORS_CODE=.. TORCH_PYTHON=..  training step vs the authors' PyTorch code -> results/bench/"
	@echo "make approx [LENGTHS=.. ATTENTION=..]  approximation error vs length and budget -> results/bench/"

# Reinstalled when the pins change or another variant is asked for (FORCE).
$(STAMP): requirements/lock.txt $(VARIANT_REQUIREMENTS) pyproject.toml $(if $(filter-out $(VARIANT),$(INSTALLED_VARIANT)),FORCE)
	@echo "install: the $(VARIANT) variant of jax into $(VENV)$(if $(INSTALLED_VARIANT), (was: $(INSTALLED_VARIANT)))$(if $(WHEELHOUSE), from $(WHEELHOUSE) without network)"
	@$(if $(WHEELHOUSE),test -d $(WHEELHOUSE) || { echo "install: WHEELHOUSE=$(WHEELHOUSE) is not a folder; make it with 'make wheelhouse' on a machine with network" >&2; exit 1; })
	rm -f $@
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(INSTALLED_VARIANT),$(PY) -m pip uninstall --quiet --disable-pip-version-check -y $(ACCELERATOR_PACKAGES) 2>/dev/null || true)
	$(PIP_INSTALL) -r requirements/lock.txt $(addprefix -r ,$(VARIANT_REQUIREMENTS))
	$(PIP_INSTALL) --no-deps -e .
	echo $(VARIANT) > $@

# Installs when needed. `make install` itself then shows what JAX sees and fails unless the variant's
# accelerator is visible; as another target's prerequisite it only installs (e.g. `make data` on a
# login node without a GPU).
install: $(STAMP)
	@$(if $(filter install,$(MAKECMDGOALS)),$(PY) -m lra.accelerator --expect $(EXPECT_BACKEND) | sed 's/^/install: /'; exit $${PIPESTATUS[0]})

# Every wheel the variant needs (those without a wheel on the index built here) -> WHEELHOUSE.
wheelhouse:
	$(PYTHON) scripts/wheelhouse.py --out $(or $(WHEELHOUSE),wheelhouse) -r requirements/lock.txt \
		$(addprefix -r ,$(VARIANT_REQUIREMENTS)) $(if $(WHEEL_PYTHON),--python-version $(WHEEL_PYTHON)) \
		$(if $(WHEEL_PLATFORM),--platform $(WHEEL_PLATFORM))

FORCE:

sweep: install
	@attentions="$(ATTENTION)"; \
	if [ -z "$$attentions" ]; then attentions=$$($(KERNEL_ENV) $(PY) -m lra.registry --runnable) || exit 1; fi; \
	echo "sweep: tasks=$(TASK) protocol=$(PRESET) attentions=$$attentions seeds=$(SEED_LIST)"; \
	$(KERNEL_ENV) $(PY) -m lra.train --multirun task=$(TASK) protocol=$(PRESET) attention=$$attentions \
		seed=$(SEED_LIST) hydra/launcher=$(LAUNCHER_CONFIG) $(KERNEL_ARGS) $(ARGS)

run: install
	$(KERNEL_ENV) $(PY) -m lra.train task=$(TASK) protocol=$(PRESET) attention=$(or $(ATTENTION),softmax) \
		$(KERNEL_ARGS) $(ARGS)

data: install
	$(PY) -m lra.prepare_data task=$(TASK) protocol=$(PRESET) $(ARGS)

leaderboard: install
	$(PY) -m lra.leaderboard $(if $(RESULTS),--results-dir $(RESULTS),--root results)

reproduce: install
	$(KERNEL_ENV) $(PY) -m lra.reproduce --table $(TABLE) $(REPRODUCE_ARGS)

check-kernel: install
	@test -n "$(ATTENTION)" || { echo "check-kernel: name the attention, e.g. make check-kernel ATTENTION=my_kernel KERNEL_DIR=my_kernels"; exit 2; }
	$(KERNEL_ENV) $(PY) -m lra.kernel_card $(ATTENTION)

# Debian's Chromium for the leaderboard page test (tests/test_leaderboard_html.py), when absent.
browser:
	@if [ -n "$$LRA_CHROMIUM" ] || [ -x /usr/bin/chromium ]; then exit 0; fi; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo="sudo -n"; else \
		echo "make browser: /usr/bin/chromium is missing; install Debian's chromium package as root" >&2; exit 1; fi; \
	command -v apt-get >/dev/null || { echo "make browser: no apt-get; install Chromium and set LRA_CHROMIUM" >&2; exit 1; }; \
	echo "make browser: installing Debian's chromium"; \
	$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

bench: install
	$(PY) -m lra.bench.efficiency --lengths $(LENGTHS) --mode $(MODE) --dtype $(DTYPE) --batch $(BATCH) \
		$(if $(ATTENTION),--attention $(ATTENTION)) $(BENCH_ARGS)

# bench-step: the training step (forward + backward + update) of PRESET x TASK per attention, interleaved
# rounds; ARGS are Hydra overrides (e.g. ARGS="task.max_length=512 train.batch_size=8"), BENCH_ARGS flags.
bench-step: install
	$(PY) -m lra.bench.step $(if $(ATTENTION),--attention $(ATTENTION)) $(BENCH_ARGS) protocol=$(PRESET) task=$(TASK) $(ARGS)

# bench-versus: this harness's step against the authors' PyTorch LRA code (Skyformer repository's src/),
# side by side on the same cores; TORCH_PYTHON is a Python with PyTorch (docs/benchmarks.md).
bench-versus: install
	@test -n "$(AUTHORS_CODE)" -a -n "$(TORCH_PYTHON)" || { echo "bench-versus: give AUTHORS_CODE=path/to/Skyformer/src TORCH_PYTHON=path/to/python"; exit 2; }
	$(PY) -m lra.bench.versus --authors-code $(AUTHORS_CODE) --torch-python $(TORCH_PYTHON) \
		$(if $(ATTENTION),--attention $(ATTENTION)) $(BENCH_ARGS) $(ARGS)

# approx sweeps LENGTHS up to 4096 unless given (its O(n^2) targets are computed on the host device).
approx: install
	$(PY) -m lra.bench.approximation --lengths $(if $(filter command line environment,$(origin LENGTHS)),$(LENGTHS),256,512,1024,2048,4096) \
		$(if $(ATTENTION),--attention $(ATTENTION)) $(BENCH_ARGS)

# Tests run in parallel worker processes (pytest-xdist); PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= auto
test: install browser
	WANDB_MODE=offline $(PY) -m pytest -q -n $(PYTEST_WORKERS)

test-slow: install browser
	WANDB_MODE=offline $(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "slow or not slow"

# Re-resolve the pinned set after editing requirements/base.in.
lock:
	rm -rf /tmp/lra-lock-venv && $(PYTHON) -m venv /tmp/lra-lock-venv
	/tmp/lra-lock-venv/bin/pip install --quiet -r requirements/base.in
	{ echo "# Full resolved dependency set for lra (CPU). Generated from requirements/base.in by 'make lock'."; \
	  echo "# Python 3.11, Linux x86-64. Do not edit by hand."; \
	  /tmp/lra-lock-venv/bin/pip freeze; } > requirements/lock.txt

# Re-resolve requirements/{cuda12,cuda13,tpu}.txt (the jax[...] extras of the pinned jax).
lock-variants: install
	$(PY) scripts/lock_variants.py

clean:
	rm -rf outputs multirun .pytest_cache
