# JR2Net developer entry points. Every target sets up what it needs, idempotently.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEPS_STAMP := $(VENV)/.deps-stamp
INSTALL_STAMP := $(VENV)/.install-stamp
NVCC ?= $(shell command -v nvcc 2>/dev/null)
CUDA_ARCH_FLAGS := -gencode arch=compute_75,code=sm_75 -gencode arch=compute_80,code=sm_80 \
	-gencode arch=compute_86,code=sm_86 -gencode arch=compute_89,code=sm_89 \
	-gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
CU_SOURCES := $(wildcard csrc/cuda/*.cu)
CU_OBJECTS := $(patsubst csrc/cuda/%.cu,build/cuda-check/%.o,$(CU_SOURCES))
CU_HEADERS := $(wildcard csrc/ops/*.h csrc/cuda/*.cuh)
# The CUDA tensor glue (csrc/cuda/*_cuda.cpp) is host C++ against torch's CUDA headers; a CPU torch
# ships those headers but not the one its CUDA build generates, so cuda-check stubs it and only
# syntax-checks the glue (a CUDA torch builds it for real in setup.py).
CU_GLUE := $(wildcard csrc/cuda/*_cuda.cpp)
CU_GLUE_CHECKS := $(patsubst csrc/cuda/%.cpp,build/cuda-check/%.ok,$(CU_GLUE))
CUDA_INCLUDE ?= $(firstword $(wildcard $(CUDA_HOME)/include /usr/local/cuda/include))
GLUE_STUB := build/cuda-check/stub/c10/cuda/impl/cuda_cmake_macros.h

.PHONY: all venv deps install build test pytest lint bench report demo cuda-check clean nginx

all: build

$(PY):
	python3 -m venv $(VENV)

$(DEPS_STAMP): requirements.txt | $(PY)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	touch $@

deps: $(DEPS_STAMP)

$(INSTALL_STAMP): $(DEPS_STAMP) setup.py pyproject.toml
	JR2NET_SKIP_EXT=1 $(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

install: $(INSTALL_STAMP)

# Incremental rebuild of the extension (ninja) after any csrc/ change; build_ext also generates
# jr2net/protocol/_generated from proto/jr2net.proto when it is missing or older (build_proto).
build: $(INSTALL_STAMP)
	@mkdir -p build
	@echo "building jr2net._C (incremental; log: build/build_ext.log)"
	@$(PY) setup.py -q build_ext --inplace > build/build_ext.log 2>&1 || \
		{ grep -v -i "warning" build/build_ext.log | tail -40; echo "build failed: see build/build_ext.log"; exit 1; }
	$(PY) -c "import torch, jr2net._C, jr2net.protocol"

# nginx (Debian package) for tests/test_scaleout.py: the gRPC proxy of docs/operations.md.
nginx:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || \
		{ echo "installing nginx (apt-get)"; apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; } || \
		{ echo "nginx could not be installed: tests/test_scaleout.py needs it"; exit 1; }

pytest: build nginx
	$(PY) -m pytest -q $(PYTEST_ARGS)

test: lint pytest cuda-check

lint: deps
	$(VENV)/bin/ruff check .

# Benchmark peers (kornia, moderngl), installed with torch pinned so pip cannot replace it.
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): requirements-bench.txt | $(DEPS_STAMP)
	@tv=$$($(PY) -c "import torch; print(torch.__version__.split('+')[0])"); \
	$(PIP) install -q -r requirements-bench.txt "torch==$$tv"
	touch $@

bench: build $(BENCH_STAMP)
	@$(PY) -c "import ctypes.util as u, sys; sys.exit(0 if u.find_library('EGL') else 1)" || \
	echo "bench: libEGL not found, the moderngl peer will be skipped (apt-get install -y libegl1 libgl1-mesa-dri)"
	$(PY) -m benchmarks.kernels
	$(PY) -m benchmarks.fitting
	$(PY) -m benchmarks.pipeline
	$(PY) -m benchmarks.server
	$(PY) -m benchmarks.quality

# benchmarks/report.md + results/report_*.png from the stored results/*.json (no re-measuring;
# REPORT_ARGS="--rerun server,quality" or "--rerun all" runs those benchmarks first).
report: build
	$(PY) -m benchmarks.report $(REPORT_ARGS)

demo: build
	$(PY) -m jr2net.cli demo --out out/demo

# Compile every CUDA kernel standalone for sm_75..sm_90 (+ compute_90 PTX); no GPU needed.
cuda-check: $(CU_OBJECTS) $(CU_GLUE_CHECKS)
	@if [ -z "$(NVCC)" ]; then echo "cuda-check: nvcc not found, skipped"; \
	else echo "cuda-check: $(words $(CU_OBJECTS)) CUDA sources compiled for sm_75 sm_80 sm_86 sm_89 sm_90 + compute_90, $(words $(CU_GLUE_CHECKS)) glue files syntax-checked"; fi

$(GLUE_STUB):
	@mkdir -p $(dir $@)
	@echo "#define C10_CUDA_BUILD_SHARED_LIBS" > $@

build/cuda-check/%.ok: csrc/cuda/%.cpp $(wildcard csrc/*.h) $(CU_HEADERS) $(GLUE_STUB) | $(DEPS_STAMP)
	@if [ -z "$(NVCC)" ]; then touch $@; \
	elif [ -z "$(CUDA_INCLUDE)" ]; then echo "cuda-check: no CUDA include dir (set CUDA_HOME); $< not checked"; else \
	echo "g++ -fsyntax-only $<"; \
	g++ -std=c++20 -fsyntax-only -Wall -Werror=unused-variable -DWITH_CUDA \
	  $$($(PY) -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))") \
	  -I$(CUDA_INCLUDE) -Ibuild/cuda-check/stub -Icsrc $< && touch $@; fi

build/cuda-check/%.o: csrc/cuda/%.cu $(CU_HEADERS)
	@mkdir -p $(dir $@)
	@if [ -z "$(NVCC)" ]; then touch $@; else \
	echo "nvcc $<"; $(NVCC) -std=c++17 -O3 -Icsrc $(CUDA_ARCH_FLAGS) -c $< -o $@; fi

clean:
	rm -rf build jr2net/_C*.so jr2net/protocol/_generated
