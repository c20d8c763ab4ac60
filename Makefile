# rolebroker: `make test` on a fresh machine installs everything it needs, then runs the suite.
# `make demo` runs the broker against an embedded local STS (no AWS account needed).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo install lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,demo]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	bash tests/clients/install.sh
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/rolebroker demo

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/warm_path.py

clean:
	rm -rf $(VENV) tests/clients/node_modules .pytest_cache .mypy_cache .ruff_cache
