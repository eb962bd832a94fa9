# Bastion: the two set-up commands are `make demo` and `make test`.
# Both create .venv when missing and (re)install only when pyproject.toml changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bastion-installed
DEMO_MODEL := models/cnn7.st

.PHONY: install demo test test-fast crosscheck bench lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,scale]'
	@touch $(STAMP)

install: $(STAMP)

# Train once; later runs reuse the checkpoint.
$(DEMO_MODEL): | $(STAMP)
	$(BIN)/bastion train --model cnn7 --data mnist-5k --epochs 5 --out $@

demo: $(STAMP) $(DEMO_MODEL)
	$(BIN)/bastion audit --model $(DEMO_MODEL) --data mnist-5k --config configs/demo.yaml --out runs/demo

# The full run takes minutes: one worker per core (files kept whole, so module fixtures are
# built once), -v names each test as it runs, --durations lists the slowest.
test: $(STAMP)
	$(BIN)/python -m pytest -v -n auto --dist loadfile --durations=15 -m "not crosscheck"

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q --durations=10 -m "not crosscheck and not slow"

# Optional: compares results with torchattacks / Foolbox / ART (installs them first).
# The peers must not replace the torch under test: a constraints file pins the installed
# torch, and torchattacks (whose metadata requires torchvision, which pulls a CUDA torch,
# though it never imports it) goes in with --no-deps after its light dependencies.
CROSSCHECK_PEERS := 'foolbox>=3.3' 'adversarial-robustness-toolbox>=1.17'
TORCHATTACKS_DEPS := 'scipy>=0.14' 'tqdm>=4.56' 'requests>=2.24' 'numpy>=1.19'
crosscheck: $(STAMP)
	$(BIN)/python -c 'import torch; print(f"torch=={torch.__version__}")' > $(VENV)/torch-pin.txt
	$(BIN)/python -m pip install -q -c $(VENV)/torch-pin.txt $(CROSSCHECK_PEERS) $(TORCHATTACKS_DEPS)
	$(BIN)/python -m pip install -q --no-deps -c $(VENV)/torch-pin.txt 'torchattacks>=3.5'
	$(BIN)/python -m pytest -q -m crosscheck

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks experiments

clean:
	rm -rf runs .cache .pytest_cache .ruff_cache
