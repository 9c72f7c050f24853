# One command to set up and run the pipeline, one to set up and run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-slow lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)  ## train, calibrate, evaluate and register on the built-in digits
	$(BIN)/siamese run

test: $(STAMP)  ## the default (fast) test suite
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)  ## the long tests (real-data training proofs, kill/outage/concurrency runs), also run by CI
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)  ## style, and the architecture's import contracts (pyproject.toml [tool.importlinter])
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports --no-logo

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline_timing.py
	$(BIN)/python benchmarks/roc_sweep.py
	$(BIN)/python benchmarks/loss_speed.py
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf artifacts mlflow.db mlartifacts mlruns .dvcstore dvc.lock
