# Two commands set everything up: `make demo` and `make test`.
# Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tltf-installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo demo-base test test-fast lint clean

# uv installs the dependencies (TensorFlow and ~120 others) in a third of pip's
# time: ~20 s against ~55 s on 2 cores; pip does it where uv cannot be had.
# --compile-bytecode, as pip does: where PYTHONDONTWRITEBYTECODE is set (CI
# machines here), every Python process would otherwise compile TensorFlow's
# sources again (`import tltf` 10.5 s instead of 5.9 s).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	($(BIN)/python -m pip install --quiet uv \
	  && $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python \
	    -e ".[test]") \
	|| ($(BIN)/python -m pip install --quiet --upgrade pip \
	  && $(BIN)/python -m pip install --quiet -e ".[test]")
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tltf demo

# Pretrains the demo base shipped in tltf/assets again (about 4 minutes).
demo-base: $(STAMP)
	$(BIN)/python -m tltf.pretrain --asset

test: $(STAMP)
	$(BIN)/ruff check tltf tests benchmarks
	$(BIN)/python -m pytest -n 2

# The quick tier (under 3 minutes on 2 cores): every module, without the tests
# marked slow.
test-fast: $(STAMP)
	$(BIN)/ruff check tltf tests benchmarks
	$(BIN)/python -m pytest -n 2 -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check tltf tests benchmarks
	$(BIN)/ruff format --check tltf tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
