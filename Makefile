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
	$(BIN)/ruff check recotem bench

# The whole suite on SQLite (unit, integration with real processes, browser), then the
# database-facing tests again on PostgreSQL.
test: install lint test-sqlite test-postgres

test-sqlite: install
	$(BIN)/pytest recotem

test-postgres: install
	DATABASE_URL=$(PG_TEST_URL) $(BIN)/pytest recotem -m "not browser and not integration" --ignore=recotem/ml --ignore=recotem/lib

bench: install
	@command -v wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) recotem-data
