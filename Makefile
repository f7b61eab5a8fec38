# The front door: `make demo` runs the main job end to end, `make test` runs the checks.
# Both create .venv on their own on a fresh machine (CPU torch pinned in constraints.txt).
# `make test-floors` runs the core tests in .venv-floors, against the lowest versions pyproject.toml allows.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FLOORS_VENV := .venv-floors
FLOORS_PY := $(FLOORS_VENV)/bin/python
FLOORS_STAMP := $(FLOORS_VENV)/.installed
# Tests that need the examples' dependencies (scikit-learn, jsonargparse, ...), which the floor venv does not install.
FLOORS_IGNORE := --ignore-glob='tests/test_demo*.py' --ignore-glob='tests/test_example*.py'

.PHONY: demo test test-floors lint bench sweep clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

$(FLOORS_STAMP): pyproject.toml constraints.txt .ci/floors.py
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_PY) .ci/floors.py > $(FLOORS_VENV)/floors.txt
	$(FLOORS_PY) -m pip install --quiet -c $(FLOORS_VENV)/floors.txt -e ".[test]"
	touch $(FLOORS_STAMP)

demo: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) examples/demo.py

test: $(STAMP) lint
	WANDB_MODE=offline $(PY) -m pytest

test-floors: $(FLOORS_STAMP)
	@$(FLOORS_PY) -m pip list 2>/dev/null | grep -iE '^(torch|torchmetrics|lightning|numpy|tqdm|typing.extensions) '
	WANDB_MODE=offline $(FLOORS_PY) -m pytest $(FLOORS_IGNORE)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/run.py

sweep: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) examples/sweep.py

clean:
	rm -rf $(VENV) $(FLOORS_VENV) runs wandb .pytest_cache
