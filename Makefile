# Two commands for a newcomer: `make run` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 8000
PYTEST_ARGS ?=

.PHONY: run test lint bench install install-dev clean

$(VENV)/.runtime: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

install: $(VENV)/.runtime
	@scripts/install-system-deps.sh

install-dev: $(VENV)/.dev
	@scripts/install-system-deps.sh --test

run: install
	$(PY) manage.py migrate --no-input
	$(PY) manage.py seed_demo
	PORT=$(PORT) $(PY) manage.py runall --port $(PORT)

test: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py makemigrations --check --dry-run

bench: install-dev
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) var test-output
