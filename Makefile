# changegate: two commands matter — `make up` (whole pipeline on the embedded stack, with a demo feed)
# and `make test` (installs everything, then lint, types and the whole test suite).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
MEMBERS := shared services/detector services/policy services/executor services/audit services/review-api services/ingest
STAMP := $(VENV)/.installed

.PHONY: help install up down test test-fast lint typecheck schemas lock bench bench-policy bench-executor \
	bench-ingest bench-detector-quality bench-detector-speed mutation prometheus-tools clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.lock $(addsuffix /pyproject.toml,$(MEMBERS))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation $(addprefix -e ,$(MEMBERS))
	touch $(STAMP)

install: $(STAMP) ## create .venv with every pinned dependency and the workspace members (editable)

up: $(STAMP) ## start broker, PostgreSQL and every service on loopback, with the demo feed (Ctrl-C stops all)
	$(BIN)/changegate dev up --demo

down: $(STAMP) ## stop a stack started by `make up` in another terminal
	$(BIN)/changegate dev down

# promtool (rule checks and tests) and the Prometheus server (docs/dashboard.png), taken from Debian's
# `prometheus` package without installing it: apt-get download + dpkg -x into .cache/prometheus.
PROMETHEUS_TOOLS := .cache/prometheus/usr/bin/promtool
$(PROMETHEUS_TOOLS):
	rm -rf .cache/prometheus-deb && mkdir -p .cache/prometheus-deb
	cd .cache/prometheus-deb && apt-get download prometheus
	dpkg -x .cache/prometheus-deb/prometheus_*.deb .cache/prometheus
	rm -rf .cache/prometheus-deb
	$(PROMETHEUS_TOOLS) --version

prometheus-tools: $(PROMETHEUS_TOOLS) ## promtool and prometheus from Debian's package, into .cache/ (not installed)

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy (strict)
	$(BIN)/mypy

test: $(STAMP) lint typecheck ## lint, types, then unit, contract, integration and e2e tests on the embedded stack
	$(BIN)/pytest

test-fast: $(STAMP) ## unit and contract tests only (no broker, no database)
	$(BIN)/pytest tests/unit tests/contract

schemas: $(STAMP) ## regenerate the checked-in JSON Schemas and AsyncAPI document from the models
	$(BIN)/changegate schemas export

lock: ## recompile requirements.lock from requirements.in (needs uv in the venv or on PATH)
	$(BIN)/python -m uv pip compile requirements.in --python-version 3.11 --generate-hashes \
	  --no-header --no-annotate --quiet -o requirements.lock.tmp
	{ echo "# Compiled by 'make lock' (uv pip compile --generate-hashes) from requirements.in. Do not edit."; \
	  cat requirements.lock.tmp; } > requirements.lock && rm requirements.lock.tmp

bench: bench-policy bench-executor bench-ingest bench-detector-quality bench-detector-speed ## every benchmark (figures printed, with a baseline from the same run)

bench-policy: $(STAMP) ## policy evaluator and service rate vs a raw aiokafka pass-through
	$(BIN)/python bench/policy_speed.py

bench-executor: $(STAMP) ## decisions/s carried out on the sandbox and the HubSpot simulator (unlimited, at its rate limit) vs a raw pass-through
	$(BIN)/python bench/executor.py

bench-ingest: $(STAMP) ## signed webhooks accepted/s and latency, batches of 1 and 100, vs a bare FastAPI producer
	$(BIN)/python bench/ingest.py

bench-detector-quality: $(STAMP) ## duplicate finder on synthetic + Febrl1/2/4, trained without labels: P/R/F1, blocking recall, calibration
	$(BIN)/python bench/detector_quality.py

bench-detector-speed: $(STAMP) ## per-event latency, memory per record, index rebuild with 10k, 100k and 1M records
	$(BIN)/python bench/detector_speed.py

mutation: $(STAMP) ## mutation run over the safety-critical pure modules: per-file scores, surviving mutants (slow; not in test)
	PYTHONPATH=tests $(BIN)/python -m mutation $(if $(JOBS),--jobs $(JOBS)) $(FILES)

clean: ## remove the venv and the dev stack's state
	rm -rf $(VENV) .changegate .cache .pytest_cache .mypy_cache .ruff_cache
