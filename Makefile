# One command to set up and run the pipeline, one to set up and run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_VERSION ?= 26.3

.PHONY: setup run test test-slow lint format bench clean lock

# Installs exactly requirements.lock (every transitive dependency, pinned with its hashes; pip
# refuses anything it does not pin), then the project itself without resolving anything more.
# pip comes first from requirements-pip.lock: pip 23 (Python 3.11's) mis-resolves a locked package
# with extras (sqlalchemy[asyncio]) in --require-hashes mode.
$(STAMP): pyproject.toml requirements.lock requirements-pip.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements-pip.lock
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@$(BIN)/pip check >/dev/null || { $(BIN)/pip check; echo "requirements.lock does not cover pyproject.toml: run make lock"; exit 1; }
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)  ## train, calibrate, evaluate and register on the built-in digits
	$(BIN)/siamese run

test: $(STAMP)  ## the default (fast) test suite
	$(BIN)/python -m pytest -q --durations=10

test-slow: $(STAMP)  ## the long tests (real-data training proofs, kill/outage/concurrency runs), also run by CI
	$(BIN)/python -m pytest -q -m slow --durations=20

lint: $(STAMP)  ## style, and the architecture's import contracts (pyproject.toml [tool.importlinter])
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports --no-logo

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline_timing.py
	$(BIN)/python benchmarks/roc_sweep.py
	$(BIN)/python benchmarks/loss_speed.py
	$(BIN)/python benchmarks/train_throughput.py

lock:  ## regenerate requirements.lock from pyproject.toml + constraints.txt (needs the package index)
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q pip-tools==7.6.2
	.venv-lock/bin/pip-compile --quiet --allow-unsafe --constraint=constraints.txt --extra=dev \
		--extra=server --generate-hashes --no-emit-index-url --no-emit-find-links --no-strip-extras \
		--output-file=requirements.lock pyproject.toml
	echo pip==$(PIP_VERSION) | .venv-lock/bin/pip-compile --quiet --allow-unsafe --generate-hashes \
		--no-emit-index-url --no-emit-find-links --output-file=requirements-pip.lock -

clean:
	rm -rf artifacts mlflow.db mlartifacts mlruns .dvcstore dvc.lock
