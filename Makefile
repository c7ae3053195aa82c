# City Service Heat — the two commands are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export CSH_DATA_DIR ?= $(CURDIR)/data
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup run demo ingest test lint format bench chromium postgres axe clean

setup: $(STAMP) ## create .venv and install the project with its dev extra (no-op when up to date)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if command -v uv >/dev/null 2>&1; then \
		uv pip install --python $(BIN)/python -e '.[dev]'; \
	else \
		$(BIN)/python -m pip install --quiet --upgrade pip && $(BIN)/python -m pip install --quiet -e '.[dev]'; \
	fi
	@touch $(STAMP)

run: setup ## build the demo snapshot if missing, then serve dashboard + API on 127.0.0.1:$PORT
	$(BIN)/python panel_serve.py

demo: setup ## (re)build only the demo snapshot if missing
	$(BIN)/python -m app.pipeline demo

ingest: setup ## ingest one registry source: make ingest SOURCE=nyc311 [SINCE=2025-11-01] [FILE=export.csv]
	@test -n "$(SOURCE)" || { echo "usage: make ingest SOURCE=<name> [SINCE=YYYY-MM-DD] [FILE=path]  (names: app/data/sources.toml)" >&2; exit 2; }
	$(BIN)/python -m app.data.ingest --source $(SOURCE) $(if $(SINCE),--since $(SINCE)) $(if $(FILE),--file $(FILE)) $(if $(ID_FIELD),--id-field $(ID_FIELD))

chromium: ## Debian's Chromium for the browser tests (Playwright cannot download browsers here)
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "Browser tests need /usr/bin/chromium: run 'sudo apt-get install -y chromium' (Debian/Ubuntu)." >&2; exit 1; \
		fi; \
	fi

postgres: ## PostgreSQL server binaries for the alerts-store tests (Debian's package; the tests start their own server)
	@if ! command -v pg_ctl >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
		else \
			echo "PostgreSQL tests will skip: run 'sudo apt-get install -y postgresql' (Debian/Ubuntu) to run them." >&2; \
		fi; \
	fi

axe: node_modules/axe-core/axe.min.js ## axe-core for the accessibility audit in the browser tests

node_modules/axe-core/axe.min.js: package.json
	npm install --no-audit --no-fund --silent
	@touch $@

test: setup chromium postgres axe lint ## everything: lint, unit, API, and browser tests
	$(BIN)/python -m pytest

lint: setup ## ruff (format + lint) and mypy
	$(BIN)/ruff format --check app tests bench panel_serve.py
	$(BIN)/ruff check app tests bench panel_serve.py
	$(BIN)/mypy app panel_serve.py

format: setup
	$(BIN)/ruff format app tests bench panel_serve.py
	$(BIN)/ruff check --fix app tests bench panel_serve.py

bench: setup ## speed and memory figures: BENCH <name> <value> <unit>, also bench/results.json
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts node_modules
