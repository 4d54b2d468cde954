# The two commands for a fresh machine (README):  make demo   and   make test
# Both create the environment first (python3 -m venv .venv, pinned by pyproject.toml + constraints.txt).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.modelyard-installed

.PHONY: env demo test bench clean-env
env: $(STAMP)

# torch first: `pip install torch==2.13.0` takes the CPU build where one is provided (this project's
# dev machines); on a GPU node it takes the CUDA build. Everything else is pinned.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: env
	$(BIN)/yard demo

test: env
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile --durations=25

bench: env
	for b in tests/bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean-env:
	rm -rf $(VENV)
