# `make run` and `make test` are all a fresh machine needs: the venv is made on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest convex-test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Role all: the agents, and WhatsApp with the console transport (it logs each message
# instead of calling Meta) and development webhook secrets, so the whole flow runs offline.
# Variables already set in the environment win.
DEV_WHATSAPP := WHATSAPP_TRANSPORT=$${WHATSAPP_TRANSPORT:-console} \
	WHATSAPP_APP_SECRET=$${WHATSAPP_APP_SECRET:-dev-app-secret} \
	WHATSAPP_VERIFY_TOKEN=$${WHATSAPP_VERIFY_TOKEN:-dev-verify-token}

run: $(STAMP)
	$(DEV_WHATSAPP) $(BIN)/agent-runtime run

test: lint typecheck convex-test pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The subprocess scenarios are independent: they run in parallel, one worker per core.
pytest: $(STAMP)
	$(BIN)/pytest -q -n auto

# The reference Convex functions: the same contract vectors, with convex-test (vitest).
convex/node_modules/.installed: convex/package.json convex/package-lock.json
	cd convex && npm ci --no-audit --no-fund
	touch $@

convex-test: convex/node_modules/.installed
	cd convex && npx vitest run && npm run typecheck

bench: $(STAMP)
	$(BIN)/python benchmarks/agents.py --agents 1000

clean:
	rm -rf $(VENV) .agent-runtime .pytest_cache .mypy_cache .ruff_cache convex/node_modules
