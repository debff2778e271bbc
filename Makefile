# erp-crm-sync — developer entry points. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE := .local
JARS := $(STATE)/cache/jars
STAMP := $(STATE)/stamps

.PHONY: setup demo test lint unit integration bench stack-up stack-down stack-status clean

setup: $(STAMP)/system $(STAMP)/venv $(STAMP)/jars ## Install everything the project needs (idempotent)

$(STAMP)/system: deploy/setup-system.sh
	@mkdir -p $(STAMP)
	bash deploy/setup-system.sh
	@touch $@

$(STAMP)/venv: pyproject.toml
	@mkdir -p $(STAMP)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

$(STAMP)/jars: deploy/pom.xml
	@mkdir -p $(STAMP)
	# The broker's classpath is every jar of its folder: a jar the pom no longer names
	# (an older logging binding) must not stay beside the new ones.
	rm -rf $(JARS)/kafka-*
	mvn -q -B -f deploy/pom.xml -Dstack.jars=$(abspath $(JARS)) generate-resources
	@touch $@

demo: setup ## Start the local stack and show changes syncing
	$(BIN)/erpcrm demo

lint: setup ## ruff, mypy and the layer contract
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: setup ## Fast tests, no services
	$(BIN)/pytest -m "not integration" tests

integration: setup ## Tests against the real local stack (started and stopped by the session)
	$(BIN)/pytest -m integration tests

test: setup lint ## Everything CI runs: lint, unit and integration tests
	$(BIN)/pytest tests

stack-up: setup
	$(BIN)/erpcrm stack up

stack-down:
	$(BIN)/erpcrm stack down

stack-status:
	$(BIN)/erpcrm stack status

clean: ## Stop the stack and remove all local state: stack data, secrets, logs, worker tables (keeps the jar cache and set-up stamps)
	-$(BIN)/erpcrm stack down
	bash deploy/clean-state.sh $(STATE) cache stamps
