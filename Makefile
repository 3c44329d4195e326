# The two commands a new user needs: `make demo` and `make test`.
# Both create .venv and install the project from pyproject.toml on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vip-bundles demo

# The quick suite (a few minutes): unit, simulator and end-to-end tests with real workers.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

# The fault-injection scenarios of tests/reliability (kill -9, broker restart, outages...).
# (exit 5 is pytest's "no test collected", e.g. with the scenarios filtered out by -k.)
test-slow: $(STAMP)
	$(BIN)/pytest -m slow || [ $$? -eq 5 ]

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
