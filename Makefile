# splitlab: `make run` sets up and runs the default scenario, `make test` runs
# the checks and the tests.  Both create .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch; pinned so pip never reaches for a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/splitlab run $(SCENARIO)

check: $(STAMP)
	$(BIN)/ruff check src tests bench docs/examples
	$(BIN)/ruff format --check src tests bench docs/examples
	$(BIN)/mypy

test: check
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) workspace
