# Two entry points, each doing its own set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; an unpinned `torch` would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

# helexa is installed into the venv (not editable) and reinstalled only when one of these changed,
# so a second `make run` / `make test` starts at once. CMake's build folder (build/) is kept, so a
# reinstall recompiles only the native sources that changed.
STAMP   := $(VENV)/.helexa-installed
SOURCES := $(shell find cortex neuron csrc kernels -type f -not -path '*/__pycache__/*' -not -name '*.pyc' 2>/dev/null) \
           CMakeLists.txt pyproject.toml README.md
INSTALL_LOG := $(VENV)/install.log
# what `pip install -v` prints that tells a person where the install is: packages as they are
# fetched, CMake's build progress, the end
PROGRESS := s/^Collecting ([^ ]+).*/  fetching \1/p; s/^ *\*\*\* (Configuring CMake|Building project).*/  \1/p; s/^ *(\[[0-9]+\/[0-9]+\]) Building [A-Z]+ object CMakeFiles\/_C\.dir\/([^ ]+)\.o$$/  \1 compiling \2/p; s/^ *(\[[0-9]+\/[0-9]+\]) Linking [A-Z]+ shared module ([^ ]+)$$/  \1 linking \2/p; s/^(Successfully installed).*/  done/p

.PHONY: run test install lint bench bench-decode cuda-check rpm rpm-cortex rpm-neuron clean

# The build runs in the venv itself (no isolated build environment): its pybind11 keeps one path, so
# CMake does not recompile the bindings at every reinstall. These are pyproject's build-system.requires
# (plus CMake and Ninja from PyPI where the system has none).
BUILD_REQUIRES := "scikit-build-core>=0.10" "pybind11>=2.12" $(if $(shell command -v cmake),,cmake) \
                  $(if $(shell command -v ninja),,ninja)

$(BIN)/python:
	@echo "==> creating $(VENV) with the CPU build of torch ($(TORCH))"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"

$(STAMP): $(BIN)/python $(SOURCES)
	@echo "==> installing helexa and its test tools into $(VENV); the first time this builds the native"
	@echo "    extension neuron._C with CMake, which takes a few minutes on 2 cores (full log: $(INSTALL_LOG))"
	@$(BIN)/python -m pip install -q $(BUILD_REQUIRES)
	@$(BIN)/python -m pip install -v --no-build-isolation ".[test]" 2>&1 | tee $(INSTALL_LOG) | sed -u -n -E '$(PROGRESS)' \
	  || { echo "error: the install failed; the end of $(INSTALL_LOG):"; tail -n 40 $(INSTALL_LOG); exit 1; }
	@touch $@

install: $(STAMP)

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

# Compiles every kernels/*.cu for each architecture of CMake's HELEXA_CUDA_ARCHS default (read from
# CMakeLists.txt, or pass CUDA_ARCHS="86 90"), warnings as errors, into a temporary folder, and prints
# how long each file took: the check that device code still builds everywhere, without installing.
CUDA_ARCHS ?= $(shell grep -m1 '^set.HELEXA_CUDA_ARCHS ' CMakeLists.txt | cut -d'"' -f2 | tr ';' ' ')
NVCC ?= nvcc
cuda-check:
	@command -v $(NVCC) >/dev/null || { echo "error: cuda-check needs nvcc (set NVCC or put it on PATH)"; exit 1; }
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; total=$$(date +%s%N); \
	echo "==> compiling kernels/*.cu for sm $(CUDA_ARCHS) with $$($(NVCC) --version | tail -n 1)"; \
	for cu in kernels/*.cu; do \
	  start=$$(date +%s%N); \
	  $(NVCC) -std=c++17 -O3 -fmad=false -Icsrc -DHELEXA_WITH_CUDA --Werror all-warnings \
	    $(foreach a,$(CUDA_ARCHS),-gencode=arch=compute_$(a),code=sm_$(a)) \
	    -Xcompiler=-ffp-contract=off,-Wall,-Wextra,-Werror -c "$$cu" -o "$$tmp/$$(basename "$$cu").o"; \
	  printf '  %-24s %5d ms\n' "$$cu" $$(( ($$(date +%s%N) - start) / 1000000 )); \
	done; \
	printf '  %-24s %5d ms\n' total $$(( ($$(date +%s%N) - total) / 1000000 ))

# RPMs (rpm/): the gateway and the neuron of one GPU generation, FLAVOUR = cpu | ampere | ada |
# blackwell, into build/rpm/RPMS. Needs rpmbuild, and nvcc for the GPU flavours; pip fetches the
# packages' dependencies (TORCH_INDEX= picks torch's index; see rpm/build.sh).
FLAVOUR ?= cpu
rpm: rpm-cortex rpm-neuron

rpm-cortex:
	bash rpm/build.sh cortex

rpm-neuron:
	bash rpm/build.sh neuron $(FLAVOUR)

clean:
	rm -rf build dist $(VENV) .pytest_cache .ruff_cache
