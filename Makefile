# The two commands: `make run` (dev server in the foreground) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-pg lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/mtaserver dev-setup -c config/dev.toml
	exec $(BIN)/mtaserver serve -c config/dev.toml

lint: $(STAMP)
	$(BIN)/ruff check mtaserver tests bench
	$(BIN)/ruff format --check mtaserver tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# The tests start ~1,000 daemon and CLI subprocesses; with PYTHONDONTWRITEBYTECODE set in
# the environment each one compiles our ~230 modules again (~0.17 s of CPU a start), so the
# test targets let Python keep its bytecode cache (__pycache__, ignored by git).
TESTENV := env -u PYTHONDONTWRITEBYTECODE

unit: $(STAMP)
	$(TESTENV) $(BIN)/python -m pytest -n auto -p no:cacheprovider

test: lint typecheck unit

# The same suite with every test daemon on a private PostgreSQL (tests/support/pgsuite.py);
# tests marked sqlite_only / pg_pending are skipped there with their reason (-rs lists them).
test-pg: $(STAMP)
	$(TESTENV) MTASERVER_TEST_BACKEND=postgresql $(BIN)/python -m pytest -n auto -p no:cacheprovider -rs

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
