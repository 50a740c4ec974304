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

# The catalogue's replication profile: development (one broker) or production (RF 3, min ISR 2).
REPLICATION ?= development

.PHONY: topics
topics: venv ## create this node's topics from the catalogue and report drift (REPLICATION=production)
	$(PY) -m services.common.topics apply --prefix "$${CREDITLINK_TOPIC_PREFIX:-}" --replication "$(REPLICATION)"

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
certs: venv ## dev root CA, a CA and a server + client certificate per city into deploy/local/certs (idempotent)
	$(PY) -m services.common.certs issue

# Checkers of the deploy/ manifests (tests/unit/test_deploy_manifests.py), cached in .cache/:
# kustomize and kubeconform, and compose-go's validator (the loader `docker compose` uses), built
# from the Go module proxy; Kubernetes' JSON schemas from the kubernetes-validate wheel, which
# ships them (kubeconform would otherwise download them). A version bump rebuilds.
KUSTOMIZE_VERSION := v5.7.1
KUBECONFORM_VERSION := v0.7.0
# compose-go's validator after v2.1.x ignores the environment (LoadModel), so it cannot interpolate.
COMPOSE_GO_VERSION := v2.1.6
K8S_SCHEMAS_VERSION := 1.37.0
TOOLS := .cache/bin

$(TOOLS)/.kustomize-$(KUSTOMIZE_VERSION):
	@command -v go >/dev/null || { echo "missing: Go (builds the deploy checkers from the Go module proxy)" >&2; exit 1; }
	GOBIN=$(CURDIR)/$(TOOLS) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	@touch $@

$(TOOLS)/.kubeconform-$(KUBECONFORM_VERSION):
	@command -v go >/dev/null || { echo "missing: Go (builds the deploy checkers from the Go module proxy)" >&2; exit 1; }
	GOBIN=$(CURDIR)/$(TOOLS) go install github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION)
	@touch $@

$(TOOLS)/.compose-spec-$(COMPOSE_GO_VERSION):
	@command -v go >/dev/null || { echo "missing: Go (builds the deploy checkers from the Go module proxy)" >&2; exit 1; }
	rm -rf $(TOOLS)/.compose-go && GOBIN=$(CURDIR)/$(TOOLS)/.compose-go go install github.com/compose-spec/compose-go/v2/cmd@$(COMPOSE_GO_VERSION)
	mv $(TOOLS)/.compose-go/cmd $(TOOLS)/compose-spec && rm -rf $(TOOLS)/.compose-go
	@touch $@

.cache/wheels/kubernetes_validate-$(K8S_SCHEMAS_VERSION)-py3-none-any.whl: | $(STAMP)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: -d .cache/wheels kubernetes-validate==$(K8S_SCHEMAS_VERSION)

.PHONY: deploy-tools
deploy-tools: $(TOOLS)/.kustomize-$(KUSTOMIZE_VERSION) $(TOOLS)/.kubeconform-$(KUBECONFORM_VERSION) $(TOOLS)/.compose-spec-$(COMPOSE_GO_VERSION) .cache/wheels/kubernetes_validate-$(K8S_SCHEMAS_VERSION)-py3-none-any.whl ## kustomize, kubeconform, compose validator, K8s schemas (cached)

# ghz, the gRPC load tool, built from the Go module proxy: the contract tests call the peer
# services with it through server reflection alone, as a peer city's operator would.
GHZ_VERSION := v0.121.0

$(TOOLS)/.ghz-$(GHZ_VERSION):
	@command -v go >/dev/null || { echo "missing: Go (builds ghz from the Go module proxy)" >&2; exit 1; }
	GOBIN=$(CURDIR)/$(TOOLS) go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)
	@touch $@

.PHONY: peer-tools
peer-tools: $(TOOLS)/.ghz-$(GHZ_VERSION) ## ghz for calling the peer services through reflection (cached)

.PHONY: test
test: venv kafka-jars deploy-tools peer-tools lint schemas-check contracts-check ## lint, then every test against a real broker the harness starts
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
