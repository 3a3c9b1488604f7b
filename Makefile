# tickcast: `make demo` shows it working, `make test` runs the whole suite. `make help` lists targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install up down status test faults unit lint typecheck fmt demo bench train evaluate lock clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tickcast needs Python >= 3.11")'
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[train,test,registry,bench]'
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP) ## create .venv and install tickcast with its [train,test,registry,bench] extras

up: $(STAMP) ## start the local Kafka broker and Redis (idempotent; logs in .local/logs)
	$(BIN)/tickcast services up

down: ## stop what `make up` started
	@test -x $(BIN)/tickcast && $(BIN)/tickcast services down || true

status: ## show the local services, their pids, RSS and log folder
	@$(BIN)/tickcast services status

# Services: TICKCAST_KAFKA__BOOTSTRAP_SERVERS / TICKCAST_REDIS__URL if set, else the local ones
# (started here).
test: $(STAMP) ## install, start local Kafka + Redis unless configured, lint, type-check, run the whole suite
	@if [ -z "$$TICKCAST_KAFKA__BOOTSTRAP_SERVERS" ] || [ -z "$$TICKCAST_REDIS__URL" ]; then $(BIN)/tickcast services up; fi
	@# promtool and Prometheus (alert rule tests, the scrape test) and amtool (the compose stack's
	@# Alertmanager config), from Debian's packages if missing
	@$(BIN)/tickcast services tools >/dev/null
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

# The fault suite (tests/faults) runs inside `make test` at small sizes; this is its full size.
faults: $(STAMP) ## the fault suite at full size: SIGKILLs, Redis and broker loss, 10,000 poison messages
	@if [ -z "$$TICKCAST_KAFKA__BOOTSTRAP_SERVERS" ] || [ -z "$$TICKCAST_REDIS__URL" ]; then $(BIN)/tickcast services up; fi
	TICKCAST_FAULTS_FULL=1 $(BIN)/pytest -m faults tests/faults $(PYTEST_ARGS)

unit: $(STAMP) ## the fast tests only (no Kafka, no Redis)
	@$(BIN)/tickcast services tools >/dev/null
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy --strict on stream/ and tools/
	$(BIN)/mypy

fmt: $(STAMP) ## format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: $(STAMP) ## the gold series through the live consumer, with a summary
	$(BIN)/tickcast demo

bench: $(STAMP) ## model, end-to-end and HTTP API benchmarks
	$(BIN)/tickcast bench model
	$(BIN)/tickcast bench e2e
	$(BIN)/tickcast bench http

train: $(STAMP) ## train a new model artifact on the bundled gold series
	$(BIN)/tickcast train

evaluate: $(STAMP) ## the served artifact against persistence, empirical, EWMA and GARCH-t baselines (docs/model-evaluation.md)
	$(BIN)/tickcast evaluate

lock: ## refresh constraints.txt from the newest versions pyproject.toml allows (then run make test)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q -e '.[train,test,registry,bench]'
	head -3 constraints.txt > constraints.new
	.lock-venv/bin/pip freeze --exclude-editable >> constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv

clean: down ## stop services, remove .venv and .local
	rm -rf $(VENV) .local .pytest_cache .mypy_cache .ruff_cache
