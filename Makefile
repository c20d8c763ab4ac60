# rolebroker: `make demo` installs only what the demo needs (rolebroker and moto), then runs it.
# `make test` on a fresh machine installs everything the suite needs, then runs it.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: test demo install lint bench clean

# bin/pip, not bin/python: a venv whose creation failed (Debian without python3-venv) has
# bin/python but no pip, and must be created again on the next run.
$(BIN)/pip:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and f"rolebroker needs Python 3.11 or newer; $(PYTHON) is {sys.version.split()[0]}: run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/pip
	@echo "make: installing rolebroker with its test tools (pytest, mypy, ruff, pinned SDK clients) into $(VENV)"
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,demo]'
	touch $(DEMO_STAMP) $(STAMP)

$(DEMO_STAMP): pyproject.toml | $(BIN)/pip
	@echo "make demo: installing rolebroker and moto (the local STS the demo runs on) into $(VENV), once"
	$(BIN)/pip install --progress-bar off -e '.[demo]'
	touch $(DEMO_STAMP)

install: $(STAMP)

test: $(STAMP)
	bash tests/clients/install.sh
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

# ROLEBROKER_PORT=9922 make demo picks another port.
demo: $(DEMO_STAMP)
	$(BIN)/rolebroker demo

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

# footprint.py compares start-up and idle figures with this git ref: the last commit of wave 1.
BENCH_BASELINE ?= 7b43ef7

bench: $(STAMP)
	$(BIN)/python bench/warm_path.py
	$(BIN)/python bench/cli_startup.py
	$(BIN)/python bench/footprint.py --baseline $(BENCH_BASELINE)

clean:
	rm -rf $(VENV) tests/clients/node_modules .pytest_cache .mypy_cache .ruff_cache
