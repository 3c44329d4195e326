# The two commands a new user needs: `make demo` and `make test`.
# Both create .venv on first use from requirements.lock: every package pinned and hash-checked,
# so a fresh clone installs exactly what the tests ran with. `make test-latest` installs the
# newest releases pyproject.toml allows instead, so drift shows up in CI before a user meets it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LATEST := .venv-latest

.PHONY: demo test test-slow test-latest lint bench lock clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vip-bundles demo

# The quick suite (about three minutes on 2 cores): unit, simulator and end-to-end tests with
# real workers. Most of it waits on workers, Redis and HTTP, so it runs on 3 processes, a test
# file each at a time (module fixtures stay shared; each process claims a Redis database of its
# own). The canvas tier goes first, alone: its in-process worker must be the only worker on its
# database, and another process's session worker would take its messages.
PYTEST_QUICK = pytest tests/canvas $(1) && $(2)/pytest -n 3 --dist loadfile --ignore=tests/canvas $(1)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/$(call PYTEST_QUICK,,$(BIN))

# The fault-injection scenarios of tests/reliability (kill -9, broker restart, outages...).
# (exit 5 is pytest's "no test collected", e.g. with the scenarios filtered out by -k.)
test-slow: $(STAMP)
	$(BIN)/pytest -m slow || [ $$? -eq 5 ]

# The quick suite again, on the newest releases that pyproject.toml allows (not the lock).
test-latest:
	$(PYTHON) -m venv --clear $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]'
	@echo "newest allowed releases that differ from requirements.lock:"
	@$(LATEST)/bin/pip list --format=freeze --exclude-editable --exclude pip --exclude setuptools | tr 'A-Z_' 'a-z-' \
		| grep -vxFf <(grep -oE '^[A-Za-z0-9_.-]+==[^ ]+' requirements.lock | tr 'A-Z_' 'a-z-') \
		| sed 's/^/  /' || echo "  none"
	$(LATEST)/bin/$(call PYTEST_QUICK,-p no:cacheprovider,$(LATEST)/bin)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m bench

# Re-resolve requirements.lock from pyproject.toml (uv, in a tools venv of its own).
lock:
	$(PYTHON) -m venv .venv-tools
	.venv-tools/bin/pip install --quiet uv
	.venv-tools/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--generate-hashes --quiet --custom-compile-command "make lock" -o requirements.lock

clean:
	rm -rf $(VENV) $(LATEST) .venv-tools .pytest_cache .ruff_cache
