# pft-lab: `make up` runs the whole lab on this machine, `make test` runs the test suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# One stamp per installed extra: `make up` needs only `lab`, `make test` needs `dev` (which
# contains `lab`, so its stamp counts for both). Either is redone when pyproject.toml changes.
STAMP_LAB := $(VENV)/.installed-lab
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: setup up test test-fast lint format clean

$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$*]'
	touch $@
	$(if $(filter dev,$*),touch $(STAMP_LAB))

.PRECIOUS: $(VENV)/.installed-%

setup: $(STAMP_DEV)

up: $(STAMP_LAB)
	@bash scripts/install-system-packages.sh --optional || true
	$(VENV)/bin/pft up

# No -x: one failure must not hide the rest of the suite. Two pytest-xdist processes, one file
# each at a time: most slow tests wait on real worker processes, and the science runs on one
# torch thread, so two share a 2-core machine well (TEST_WORKERS=0 runs in one process).
TEST_WORKERS ?= 2
test: $(STAMP_DEV)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: $(STAMP_DEV)
	$(PY) -m pytest -q -m "not slow and not e2e" $(PYTEST_ARGS)

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP_DEV)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
