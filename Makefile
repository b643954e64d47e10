# One entry point for a fresh machine: `make demo` (main job) and `make test` (test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench colcon-check clean

setup: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cmirl demo --json out/demo/summary.json

test: $(STAMP)
	$(BIN)/python -m pytest -q test

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" test

colcon-check: $(STAMP)
	bash test/colcon_check.sh

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf build install log out .pytest_cache
