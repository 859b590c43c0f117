# Two commands matter: `make run` (the app on the embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PG_TEST_URL ?= postgresql://postgres@127.0.0.1:5432/test
REDIS_TEST_URL ?= redis://127.0.0.1:6379/15

.PHONY: install run test test-sqlite test-postgres lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/recotem migrate
	$(BIN)/recotem up

lint: install
	$(BIN)/ruff check recotem bench conftest.py
	$(BIN)/ruff format --check recotem bench conftest.py
	$(BIN)/lint-imports
	$(BIN)/mypy recotem

# The whole suite on SQLite (unit, integration with real processes, browser), then the
# database-facing tests again on PostgreSQL.
test: install lint test-sqlite test-postgres

# Unit tests share the two cores (pytest-xdist, one database and data dir per worker); tests
# that start real processes run a file per worker (each file shares its processes).
test-sqlite: install
	$(BIN)/pytest recotem -m "not integration and not browser" -n 2
	$(BIN)/pytest recotem -m "integration or browser" -n 2 --dist loadfile

test-postgres: install
	DATABASE_URL=$(PG_TEST_URL) $(BIN)/pytest recotem -m "not browser and not integration" --ignore=recotem/ml --ignore=recotem/lib -n 2

bench: install
	@command -v wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) recotem-data
