# Two commands: `make demo` (set-up + the main job) and `make test` (set-up + tests).
# Torch is installed first, pinned only here and overridable (GPU users: TORCH_SPEC="torch"
# with their own index), so that `torch>=...` in pyproject.toml is already satisfied.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.seqrl-installed
PYTEST_ARGS ?=

.PHONY: demo test setup lint clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m seqrl.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-venv:
	rm -rf $(VENV)
