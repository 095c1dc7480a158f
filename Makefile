# The two commands a newcomer runs: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch is installed first so nothing pulls a multi-GB CUDA build.
# GPU users: make TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://<your torch index>/cu128" EXTRAS=dev,gpu
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= dev
PY := $(VENV)/bin/python
EDGESEG_HOME ?= $(HOME)/.cache/edgeseg
VIDEO := $(EDGESEG_HOME)/video/vtest.avi
export EDGESEG_HOME

.PHONY: install demo test lint typecheck unit integration video chromium postgresql bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

# Real pedestrian footage from Debian's opencv-doc package (never committed; see README credits).
video: $(VIDEO)
$(VIDEO):
	bash scripts/fetch-vtest.sh $(dir $(VIDEO))

chromium:
	bash scripts/ensure-chromium.sh

# The server programs the tests start a throwaway PostgreSQL cluster with (MLflow's backend store).
postgresql:
	bash scripts/ensure-postgresql.sh

demo: install
	$(VENV)/bin/edgeseg demo

lint: install
	$(VENV)/bin/ruff check edgeseg tests benchmarks
	$(VENV)/bin/ruff format --check edgeseg tests benchmarks

typecheck: install
	$(VENV)/bin/mypy

test: install video chromium postgresql lint typecheck
	$(VENV)/bin/python -m pytest -q --timeout=600

# The five performance goals of issue 11, measured side by side (~16 min on 2 cores; JSON on stdout and in
# benchmarks/results/goals.json). BENCH_ARGS="--reference" adds the reference ablation (~9 min more),
# "--trials 1000" measures goal 5 at 1,000 trials. The other benchmarks/bench_*.py run by hand (README).
bench: install
	$(PY) benchmarks/bench_goals.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
