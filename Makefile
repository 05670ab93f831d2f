# quant-workbench: `make reproduce` recomputes every notebook, `make test` runs the test suite.
# Both create .venv if missing, install the project with pinned versions, and fetch the assets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
# Quiet, reproducible notebook runs: no progress bars, deterministic hashing, offline hub libs.
export TQDM_DISABLE := 1
export PYTHONHASHSEED := 0
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_VERBOSITY := error
export TOKENIZERS_PARALLELISM := false

.PHONY: all setup assets lab reproduce reproduce-plan reproduce-clean report test unit integration notebooks-test notebooks-sync benchmark benchmark-quantizers benchmark-gptq benchmark-abilities benchmark-adapt numerics-spread lock clean-results

all: test

setup: $(VENV)/.installed

# The installer tools (pip, setuptools, wheel) come from the lock too: a newer pip changes what installs.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,compare,ray,export]'
	touch $@

assets: setup
	$(PY) -m workbench.assets fetch
	$(PY) -c "from workbench.models import load_model; load_model('smollm2-135m')"

# JupyterLab on notebooks/, run from the venv so that its `python3` kernel is the venv's python
# (the one where `import workbench` works). Extra options: make lab LAB_ARGS="--port=8890 --no-browser".
LAB_ARGS ?=
lab: assets
	$(PY) -m jupyter lab --notebook-dir=notebooks $(LAB_ARGS)

# Execute every notebook in place, recomputing every result instead of reading the committed
# snapshots; figures/, data/results/ and data/snapshots/ are rewritten. Results are stored in
# REPRODUCE_RESULTS as each sweep point finishes, so a stopped `make reproduce` resumes where it
# stopped (several sittings); `make reproduce-clean` starts over.
REPRODUCE_RESULTS ?= $${WORKBENCH_HOME:-$$HOME/.cache/workbench}/reproduce
reproduce: assets
	for nb in $(NOTEBOOKS); do echo "== $$nb"; \
	  WORKBENCH_RESULTS="$(REPRODUCE_RESULTS)" WORKBENCH_RECOMPUTE=1 $(PY) -m jupyter nbconvert --to notebook \
	    --execute --inplace --ExecutePreprocessor.timeout=14400 "$$nb" || exit 1; done
	$(PY) -m workbench.report_page

# What make reproduce costs, per snapshot and per notebook, from the wall times recorded in the committed
# snapshots, and what is left of it in REPRODUCE_RESULTS (points stored by earlier sittings). One notebook
# per sitting: make reproduce NOTEBOOKS=notebooks/04_emergent_abilities.ipynb
reproduce-plan: setup
	$(PY) -m workbench.experiments "$(REPRODUCE_RESULTS)"

# report/index.html: every notebook's findings table and figures on one page (from the executed notebooks)
report:
	$(PY) -m workbench.report_page

reproduce-clean:
	rm -rf "$(REPRODUCE_RESULTS)"

# Unit tests (tests/test_snapshots.py recomputes a sample of every committed snapshot from
# scratch and checks it by workbench/reproducibility.py's rule), then nbval: every committed
# notebook output must equal a fresh execution from an empty results cache (a temporary one),
# the snapshots aside, so that no stale number can pass.
# `make unit` needs no asset (offline, about 3 minutes); `make integration` needs them (marked
# @pytest.mark.integration: real models, corpora and task data; and the browser test).
test: unit integration notebooks-test

unit: setup
	$(PY) -m pytest tests -q -m "not integration and not browser"

integration: assets
	$(PY) -m pytest tests -q -m "integration or browser" --durations=15

notebooks-test: assets
	export WORKBENCH_RESULTS=$$(mktemp -d); trap 'rm -rf "$$WORKBENCH_RESULTS"' EXIT; \
	  $(PY) -m pytest --nbval notebooks -p no:cacheprovider \
	    --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg --nbval-cell-timeout 1800 -q

# Each notebook is a jupytext pair, NN_name.ipynb (outputs) + NN_name.py (percent script): after
# editing either one, this brings the other up to date (the newer wins); tests/test_notebook_pairs.py
# fails while a pair disagrees. Re-execute the notebook afterwards so that its outputs match.
notebooks-sync: setup
	$(PY) -m jupytext --sync notebooks/[0-9][0-9]_*.ipynb

# Timings (not tests). The quantizer benchmark is long (every method at 8/4/3/2 bits): make benchmark-quantizers.
benchmark: assets
	$(PY) benchmarks/bench_foundation.py
	$(PY) benchmarks/bench_probes.py

benchmark-quantizers: assets
	$(PY) benchmarks/bench_quantizers.py

# GPTQ beside the reference implementation in one run (about 8 min): REFERENCE=<a checkout of
# github.com/IST-DASLab/gptq>; without it, the workbench's two orders only
benchmark-gptq: assets
	$(PY) benchmarks/bench_gptq_reference.py $(if $(REFERENCE),--reference $(REFERENCE),--sides workbench workbench-true-sequential)

# items/s per ability, and the wall time of notebook 04's whole bits sweep
benchmark-abilities: assets
	$(PY) benchmarks/bench_abilities.py --sweep

benchmark-adapt: assets
	$(PY) benchmarks/bench_adapt.py

# How far the committed snapshots (and notebook 01's GPTQ row) move with the CPU's kernels:
# data/results/numerics_spread.csv and numerics_spread_gptq.csv (about 20 minutes)
numerics-spread: assets
	$(PY) tools/numerics_spread.py
	$(PY) tools/numerics_spread.py --gptq

lock: setup
	$(PY) -m pip freeze --all --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/' | \
	  cat <(head -3 constraints.txt) - > constraints.tmp && mv constraints.tmp constraints.txt
