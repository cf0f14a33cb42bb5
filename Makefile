# CLI Scheduler: `make run` starts everything on one box (embedded SQLite + file broker); `make test` tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PG_SERVER ?= postgres://postgres@127.0.0.1:5432
REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: install run test test-postgres test-embedded lint bench clean browser sandbox

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

run: install sandbox
	$(PY) manage.py start

# Production stack (PostgreSQL + Redis, both real) and then the end-to-end path on the embedded default.
test: install browser sandbox lint test-postgres test-embedded

# Debian's Chromium for the admin browser test (Playwright drives it; it never downloads a browser itself).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium not installed: the browser test will be skipped"

# ruff, then the import contracts of pyproject.toml (the one-way layers of docs/architecture.md).
# Debian's bubblewrap: every run is sandboxed with it (docs/security.md). Installed when missing and run as root;
# otherwise workers refuse to start until it is installed, or SCHEDULER_SANDBOX=off says to run CLIs unsandboxed.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; } || \
	  echo "bubblewrap not installed: install it (sudo apt-get install bubblewrap) or set SCHEDULER_SANDBOX=off"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# Each run gets its own database (pytest-django creates test_<name> and drops it at the end) and its own Redis
# key prefix, so runs on one machine (CI, developers, several checkouts) never see each other's rows or queues.
test-postgres: install
	tmp=$$(mktemp -d) && db=cli_scheduler_$$(basename $$tmp | tr -dc 'A-Za-z0-9' | tr 'A-Z' 'a-z') && \
	SECRET_KEY=$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))') \
	SCHEDULER_ENCRYPTION_KEY=$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))') \
	DATABASE_URL=$(PG_SERVER)/$$db CELERY_BROKER_URL=$(REDIS_URL) SCHEDULER_BROKER_PREFIX="test-$$db:" DB_CONN_MAX_AGE=0 \
	SCHEDULER_VAR_DIR=$$tmp $(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; rm -rf $$tmp; exit $$rc

test-embedded: install
	tmp=$$(mktemp -d) && env -u DATABASE_URL -u CELERY_BROKER_URL \
	SCHEDULER_VAR_DIR=$$tmp $(PY) -m pytest -q -m e2e $(PYTEST_ARGS); rc=$$?; rm -rf $$tmp; exit $$rc

# The whole issue-9 suite (bench/suite.py); BENCH_ARGS replaces --quick, e.g. BENCH_ARGS="--only latency".
bench: install
	$(PY) -m bench all $(or $(BENCH_ARGS),--quick)

clean:
	rm -rf $(VENV) var
