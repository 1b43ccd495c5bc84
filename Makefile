# The two sacred commands: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The oldest supported Flask and Werkzeug (.ci/oldest.txt), in a virtualenv of its own.
OLDEST := .venv-oldest
OLDEST_STAMP := $(OLDEST)/.installed

.PHONY: demo test test-oldest test-flask-source lint bench format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[tests,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest

$(OLDEST_STAMP): pyproject.toml .ci/oldest.txt
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST)/bin/python -m pip install --quiet -c .ci/oldest.txt -e ".[tests]"
	touch $(OLDEST_STAMP)

# The whole suite on the oldest Flask we claim to support (CI runs it too).
test-oldest: $(OLDEST_STAMP)
	$(OLDEST)/bin/python -c 'import importlib.metadata as m; print("flask", m.version("flask"), "werkzeug", m.version("werkzeug"))'
	$(OLDEST)/bin/python -m pytest

# The whole suite on Flask from a source checkout: make test-flask-source FLASK=../flask
test-flask-source:
	@test -n "$(FLASK)" || { echo "usage: make test-flask-source FLASK=path/to/flask"; exit 2; }
	tests/flask_source.sh "$(FLASK)"

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src tests examples bench
	$(BIN)/ruff format src tests examples bench

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(OLDEST) .venv-flask-source .pytest_cache .mypy_cache .ruff_cache
