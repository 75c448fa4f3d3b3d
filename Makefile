# Two entry points, each doing its own set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; an unpinned `torch` would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: run test install lint bench bench-decode clean


$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"

install: $(BIN)/python
	$(BIN)/python -m pip install -q ".[test]"

# A one-machine fleet: a local neuron with the demo model and the gateway in front of it.
run: install
	$(BIN)/cortex up $(ARGS)

bench: install
	$(BIN)/python bench/kernels_cpu.py $(ARGS)

bench-decode: install
	$(BIN)/python bench/neuron_decode.py $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest $(ARGS)

clean:
	rm -rf build dist $(VENV) .pytest_cache .ruff_cache
