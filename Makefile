# The two commands for a fresh machine (README):  make demo   and   make test
# Both create the environment first (python3 -m venv .venv, pinned by pyproject.toml + constraints.txt).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.modelyard-installed

.PHONY: env demo test check bench clean-env browser pictures
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

# The probe console's browser test (tests/serve/test_app.py) drives Debian's chromium: as root with
# apt-get, install it when missing (quietly, once); anywhere else that test skips and says why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || [ "$$(id -u)" != 0 ] || \
		! command -v apt-get >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
		echo "browser: could not install chromium; tests/serve/test_app.py will skip its browser test"

# One more xdist worker than cores (3 on 2 cores, at most 8): the scenario tests spend part of their
# time waiting on processes they stopped or started, and a third worker keeps both cores busy then.
# --no-loadscope-reorder: modules go out in the order tests/conftest.py gives (longest first), not
# xdist's own (most tests first), which left a minutes-long module for the end.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min(8, max(3, (os.cpu_count() or 2) + 1)))')

# PYTHONDONTWRITEBYTECODE (set on some machines, this project's dev VMs among them) is left out of the
# test run: with it, every xdist worker re-did pytest's assertion rewrite of every test module (5 CPU-s
# each) and every Ray worker and subprocess compiled the project's modules again, on every run.
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest

test: env browser
	$(PYTEST) -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

# The inner loop: every test that starts no Ray, runs no end-to-end job and times nothing (2.5
# minutes on 2 cores with the test zoo built, 27aa4a4). Not a replacement for `make test`, which CI runs.
check: env
	$(BIN)/python -m compileall -q cluster actors serve tune tests
	$(PYTEST) -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow and not ray and not quiet"

# README's pictures (docs/img/) from a demo store: `make demo` first (YARD_STORE or .yard). The probe
# console's screenshot comes from its browser test.
pictures: env browser
	$(BIN)/python docs/pictures.py --store $${YARD_STORE:-.yard} --out docs/img
	YARD_TEST_ARTIFACTS=docs/img $(BIN)/python -m pytest -q -p no:cacheprovider tests/serve/test_app.py -k browser

bench: env
	for b in tests/bench/bench_*.py tests/bench/serve/bench_serve.py tests/bench/serve/bench_serve_http_path.py \
		tests/bench/serve/bench_serve_ingress_cpu.py; do $(BIN)/python $$b || exit 1; done

clean-env:
	rm -rf $(VENV)
