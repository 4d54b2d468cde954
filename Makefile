# The two commands for a fresh machine (README):  make demo   and   make test
# Both create the environment first (python3 -m venv .venv, pinned by pyproject.toml + constraints.txt).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.modelyard-installed

.PHONY: env demo test bench clean-env browser
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

# The probe console's browser test (tests/serve/test_console.py) drives Debian's chromium: as root with
# apt-get, install it when missing (quietly, once); anywhere else that test skips and says why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || [ "$$(id -u)" != 0 ] || \
		! command -v apt-get >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
		echo "browser: could not install chromium; tests/serve/test_console.py will skip its browser test"

test: env browser
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile --durations=25

bench: env
	for b in tests/bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean-env:
	rm -rf $(VENV)
