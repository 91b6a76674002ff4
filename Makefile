# The two commands a newcomer needs: `make demo` and `make test`. Both bootstrap their own
# environment: uv (installed into .bootstrap/ if it is not on PATH) and `uv sync --frozen`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
BOOTSTRAP := .bootstrap
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/$(BOOTSTRAP)/bin/uv)
# Never download a Python: use the machine's (3.11+), as the README promises.
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(shell $(PYTHON) -c 'import sys; print(sys.executable)' 2>/dev/null || echo $(PYTHON))
RUN := $(UV) run --frozen --no-sync
DEMO_DIR := $(CURDIR)/.demo

.PHONY: help env demo test lint format generate check-generated clean

help:
	@echo "make demo   run the most complete real flow there is, on this machine"
	@echo "make test   run every test (needs only Python 3.11+; system tests skip with a reason)"
	@echo "make lint   ruff (lint + format check) and mypy"
	@echo "make generate         regenerate gRPC stubs and golden vectors"
	@echo "make check-generated  fail if committed stubs or vectors drifted"

$(CURDIR)/$(BOOTSTRAP)/bin/uv:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed; run make PYTHON=python3.11 ...")'
	@echo "uv not found: installing it into $(BOOTSTRAP)/"
	@$(PYTHON) -m venv $(BOOTSTRAP) 2>/dev/null && $(BOOTSTRAP)/bin/pip install --quiet uv \
	  || { rm -rf $(BOOTSTRAP); $(PYTHON) -m pip install --quiet --target $(BOOTSTRAP)/lib uv \
	       && mkdir -p $(BOOTSTRAP)/bin && ln -sf ../lib/bin/uv $(BOOTSTRAP)/bin/uv; }

env: $(UV)
	@$(UV) sync --frozen --all-packages --quiet

test: env
	$(RUN) pytest $(PYTEST_ARGS)

lint: env
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy

format: env
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

generate: env
	$(RUN) python proto/scripts/generate_grpc.py
	$(RUN) python proto/scripts/make_vectors.py

check-generated: env
	$(RUN) python proto/scripts/generate_grpc.py --check
	$(RUN) python proto/scripts/make_vectors.py --check

demo: env
	@$(RUN) bash demo/run.sh "$(DEMO_DIR)"

# Every benchmark (about 45 minutes with the image's; root); rewrites the figures in docs/benchmarks.md.
.PHONY: bench
bench: env
	$(RUN) python bench/run.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
