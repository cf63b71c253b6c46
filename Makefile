# tradeloop — `make demo` runs the whole loop locally, `make test` runs every test tier.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-12)
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
TEST_REDIS_URL ?= $(or $(REDIS_URL),redis://127.0.0.1:6379/0)
TEST_DATABASE_URL ?= $(or $(DATABASE_URL),postgresql+asyncpg://postgres@127.0.0.1:5432/test)

.PHONY: install demo test test-unit test-integration test-e2e lint typecheck asyncapi clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q $(FIND_LINKS) -r requirements.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	rm -f $(VENV)/.installed-*; touch $@

demo: $(STAMP)  ## the whole loop end to end: 4 services, embedded SQLite, Redis at REDIS_URL (db 15)
	$(BIN)/tradeloop demo

test: $(STAMP)  ## unit + integration + end-to-end, on the Redis/PostgreSQL at REDIS_URL/DATABASE_URL
	REDIS_URL=$(TEST_REDIS_URL) DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python -m pytest tests

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

test-integration: $(STAMP)
	REDIS_URL=$(TEST_REDIS_URL) DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python -m pytest tests/integration

test-e2e: $(STAMP)
	REDIS_URL=$(TEST_REDIS_URL) DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python -m pytest tests/e2e

lint: $(STAMP)
	$(BIN)/ruff check shared services tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

asyncapi: $(STAMP)  ## regenerate docs/asyncapi.json from the code
	$(BIN)/faststream docs gen shared.asyncapi:build_app --factory --out docs/asyncapi.json

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
