# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-slow test-nt venv bench docs figures clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[all]"
	# the fused kernel rules' C++ extension, compiled once here rather than by the first kernel
	$(PY) -c "from widenet._engine import fused; fused._load()"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/widenet run

test: $(STAMP)
	$(PY) -m pytest -q -n 2 -p no:cacheprovider -m "not nt and not slow"

# the long statistical studies (second nonlinearities and datasets of the Monte Carlo oracles)
test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 -p no:cacheprovider -m slow

# Side by side with Neural Tangents (needs ../shared/tools/nt-env.sh's environment); never in CI.
test-nt: $(STAMP)
	$(PY) -m pytest -q -n 2 -p no:cacheprovider -m nt

bench: $(STAMP)
	$(PY) benchmarks/run.py

# The documentation site, built strictly (any warning is an error) into site/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# The examples' figures that the documentation shows (several minutes on two cores).
figures: $(STAMP)
	for example in phase_diagrams learning_curves learning_rate_phases hessian_subspace finite_vs_infinite finite_width_corrections graph_kernels; do \
		MPLBACKEND=Agg $(PY) examples/$$example.py --out docs/figures || exit 1; done
	MPLBACKEND=Agg $(PY) examples/kip.py --figure docs/figures/kip.png

clean:
	rm -rf $(VENV) build site src/*.egg-info
