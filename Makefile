# The front door: `make demo` runs the main job end to end, `make test` runs the checks.
# Both create .venv on their own on a fresh machine (CPU torch pinned in constraints.txt).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench sweep clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) examples/demo.py

test: $(STAMP) lint
	WANDB_MODE=offline $(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/run.py

sweep: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) examples/sweep.py

clean:
	rm -rf $(VENV) runs wandb .pytest_cache
