# stockex — two commands: `make run` (embedded SQLite, no services needed) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: run test lint system-deps compose-check clean help

help:
	@echo "make run   - set up .venv, migrate the embedded SQLite database, run stockex"
	@echo "make test  - set up .venv with dev+airflow extras, MariaDB and Redis, run ruff + pytest"

# Debian's python3 without python3-venv creates bin/python, then fails (no ensurepip): remove
# it, or every later run would take the venv as made and fail on its missing pip.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { rm -f $@; exit 1; }
	$(PIP) --upgrade pip

# Stamps: reinstall only when pyproject.toml changes.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[dev,airflow]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/stockex db upgrade
	exec scripts/run-local.sh

system-deps:
	scripts/install-system-deps.sh

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

test: $(VENV)/.installed-dev system-deps
	$(BIN)/ruff check .
	$(BIN)/pytest

compose-check:
	docker-compose config -q

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
