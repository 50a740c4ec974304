# creditlink — the team's vocabulary. Every target bootstraps what it needs.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON_BASE ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KAFKA := deploy/local/kafka.sh
export KAFKA_BOOTSTRAP ?= 127.0.0.1:19092
# Pytest selection, e.g. `make test PYTEST_ARGS="-k intake"`.
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# --- bootstrap ---------------------------------------------------------------------------
$(STAMP): requirements.lock
	@command -v $(PYTHON_BASE) >/dev/null || { echo "missing: Python 3.11 ($(PYTHON_BASE))" >&2; exit 1; }
	@[ -x $(PY) ] || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m contracts.codegen link  # makes creditlink.peer.v1 importable from the venv
	@touch $@

.PHONY: venv
venv: $(STAMP) ## create the virtual environment with the pinned dependencies

.PHONY: lock
lock: ## re-pin requirements.lock from requirements.in
	rm -rf .cache/lock-venv && $(PYTHON_BASE) -m venv .cache/lock-venv
	.cache/lock-venv/bin/pip install --quiet -r requirements.in
	{ echo "# Pinned by 'make lock' from requirements.in; installed with pip -r."; \
	  .cache/lock-venv/bin/pip freeze; } > requirements.lock

.PHONY: kafka-jars
kafka-jars: ## fetch the Kafka broker's jars from Maven Central (cached)
	$(KAFKA) fetch

.PHONY: kafka-up
kafka-up: ## start a single-node KRaft broker, print its bootstrap address
	$(KAFKA) up

.PHONY: kafka-down
kafka-down: ## stop the broker
	$(KAFKA) down

.PHONY: kafka-wipe
kafka-wipe: ## stop the broker and delete its data
	$(KAFKA) wipe

.PHONY: topics
topics: venv ## create this node's topics from the catalogue and report drift
	$(PY) -m services.common.topics apply --prefix "$${CREDITLINK_TOPIC_PREFIX:-}"

# --- quality -----------------------------------------------------------------------------
.PHONY: lint
lint: venv ## ruff (lint + format) and mypy strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: schemas-check
schemas-check: venv ## every schema compatible with its earlier versions per topic mode
	$(PY) -m services.common.avro check

.PHONY: gen
gen: venv ## regenerate contracts/gen/python from the protos and contracts/asyncapi.yaml from schemas/
	$(PY) -m contracts.codegen generate
	$(PY) -m contracts.asyncapi generate

.PHONY: contracts-check
contracts-check: venv ## buf lint, buf breaking vs the released baseline, generated code and AsyncAPI current
	cd contracts && ../$(VENV)/bin/buf lint
	cd contracts && ../$(VENV)/bin/buf breaking --against baseline/v1.0.0
	$(PY) -m contracts.codegen check
	$(PY) -m contracts.asyncapi check

.PHONY: certs
certs: venv ## dev CA and one server + client certificate per city into deploy/local/certs (idempotent)
	$(PY) -m services.common.certs issue

.PHONY: test
test: venv kafka-jars lint schemas-check contracts-check ## lint, then every test against a real broker the harness starts
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: bench
bench: venv kafka-jars ## benchmarks, each next to a baseline measured in the same run
	$(PY) -m bench

# --- running -----------------------------------------------------------------------------
.PHONY: demo
demo: venv kafka-jars ## start the region on one machine and play the scenario through it
	$(PY) -m deploy.demo $(if $(KEEP),--keep,)

.PHONY: clean
clean: ## remove caches (keeps the venv and the jar cache)
	rm -rf .mypy_cache .ruff_cache .pytest_cache bench/results
