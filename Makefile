# falq: the two commands a newcomer needs are `make demo` and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit chaos bench bench-quick clean

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

## make demo: start Redis, S3, the fal emulator and a worker locally; run real jobs; save the images.
demo: install
	$(BIN)/python -m ops.demo $(ARGS)

## make test: lint, type-check and run the whole default suite (starts its own servers).
test: install lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check shared workers producers emulator ops gateway tests

typecheck: install
	$(BIN)/mypy

chaos: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m chaos tests/chaos

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache

## make bench: the full benchmark the README reports (falq beside its references; table + docs/bench.png).
bench: install
	$(BIN)/python -m ops.bench

## make bench-quick: the same scenarios scaled down, under two minutes.
bench-quick: install
	$(BIN)/python -m ops.bench --quick
