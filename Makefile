# make demo: create .venv, install oocstore (with Pillow, for the demo's photos), run the demo.
# make test: the whole test suite and the strict docs build.  make docs: the documentation site,
# into site/.
# make stress: the full reliability counts (kills, full disks, mutated stores; 10-20 min),
# summary in $(STRESS_REPORT), quoted by docs/guarantees.md.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CPU builds of the frameworks whose adapters are tested for real (a failed install: skipped).
# TensorFlow 2.21 pins h5py<3.15; 2.20 keeps the h5py the HDF5 backend is tested with.
TORCH  ?= torch==2.13.0
TF     ?= tensorflow-cpu==2.20.0
JAX    ?= jax==0.10.2
STRESS_REPORT ?= docs/stress-summary.json

.PHONY: demo test stress lint typecheck docs bench clean hdf5-tools

$(VENV)/.installed-core: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[images]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-core
	$(BIN)/python -m pip install -q -e '.[dev,bench,docs,dask]'
	$(BIN)/python -m pip install -q '$(TORCH)' || echo "warning: $(TORCH) could not be installed; its tests will be skipped"
	$(BIN)/python -m pip install -q '$(TF)' || echo "warning: $(TF) could not be installed; its tests will be skipped"
	$(BIN)/python -m pip install -q '$(JAX)' || echo "warning: $(JAX) could not be installed; its tests will be skipped"
	touch $@

# h5dump/h5ls, so the tests check that an HDF5 store opens with HDF5's own tools: installed
# with apt when running as root (CI); elsewhere those tests are skipped, with their reason.
hdf5-tools:
	@command -v h5dump >/dev/null && command -v h5ls >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq hdf5-tools >/dev/null 2>&1 \
	  || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq hdf5-tools >/dev/null 2>&1; } \
	  || echo "warning: hdf5-tools could not be installed; the h5dump tests will be skipped"; \
	else echo "note: h5dump not found and not root with apt; the h5dump tests will be skipped"; fi

demo: $(VENV)/.installed-core
	$(BIN)/oocstore demo demo.ooc

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check oocstore tests benchmarks mkdocs_hooks.py
	$(BIN)/ruff format --check oocstore tests benchmarks mkdocs_hooks.py

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# --strict: a broken link, a page missing from the nav or a docstring griffe cannot parse fails.
# NO_MKDOCS_2_WARNING silences Material's end-of-life banner, which is not about this site.
# Not --quiet: it hides the warnings, and --strict then lets them pass.
docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: $(VENV)/.installed-dev hdf5-tools
	$(BIN)/ruff check oocstore tests benchmarks mkdocs_hooks.py
	$(BIN)/mypy
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -q
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# -m stress overrides pyproject's "-m not stress": only the full-count parametrisations run.
stress: $(VENV)/.installed-dev hdf5-tools
	rm -f $(STRESS_REPORT)
	OOCSTORE_STRESS_REPORT=$(STRESS_REPORT) HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -q -m stress
	@echo "stress summary: $(STRESS_REPORT)"

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/write_throughput.py

clean:
	rm -rf $(VENV) demo.ooc demo-photos.ooc site .pytest_cache .hypothesis .mypy_cache .ruff_cache
