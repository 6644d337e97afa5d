# Every target installs what it needs first; `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION ?= 0.13.9
HOST ?= 127.0.0.1
PORT ?= 8000
COMPOSE ?= docker compose -f docker/docker-compose.yml
IMAGE ?= fastapi-template:latest

# Use uv from PATH when there is one, else a copy bootstrapped into .tools/. Progress
# goes to stderr, so `TOKEN=$$(make -s token)` captures the token alone; `mkdir` of a
# lock directory (atomic) lets two make commands started at once share one bootstrap.
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)
RUN := $(UV) run --frozen --no-sync

.PHONY: help venv install dev worker worker-check up down logs image secret rename resource migrate prestart webhooks-replay token test coverage lint format hooks openapi bench

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-13s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(CURDIR)/.tools/bin/uv:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (found " + sys.version.split()[0] + "); set PYTHON=/path/to/python3.11")'
	@if mkdir .tools-bootstrap 2>/dev/null; then \
	  echo "uv not found on PATH: bootstrapping uv $(UV_VERSION) into .tools/" >&2; \
	  $(PYTHON) -m venv .tools && \
	  .tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)" >&2; \
	  status=$$?; rmdir .tools-bootstrap; exit $$status; \
	fi; \
	for _ in $$(seq 1 300); do test -d .tools-bootstrap || break; sleep 1; done; \
	test -x $@ || { echo "uv bootstrap failed; run make again" >&2; exit 1; }

venv: $(UV) ## Create the virtual environment (.venv)
	@$(UV) venv --quiet --allow-existing .venv

install: venv ## Install the locked dependencies (app + dev tools) into .venv
	@$(UV) sync --frozen --all-extras --quiet --compile-bytecode

dev: install migrate ## Install, migrate and serve the API with reload on 127.0.0.1:8000 (SQLite default)
	$(RUN) uvicorn app.main:app --reload --host $(HOST) --port $(PORT) --no-access-log --no-proxy-headers

# arq's own --watch restarts the worker loop without re-importing code; watchfiles
# restarts the process, so edits to jobs take effect.
worker: install ## Run the job worker, restarting it when app/ changes (needs REDIS_URL)
	@$(RUN) python -c 'from app.jobs import worker; worker.WorkerSettings'
	$(RUN) watchfiles --filter python 'arq app.jobs.worker.WorkerSettings' app

worker-check: install ## Exit 0 if this machine's worker on JOBS_QUEUE_NAME reported in the last 30 s, else 1
	@$(RUN) arq --check app.jobs.worker.WorkerSettings

up: ## Start the compose stack (API, worker, PostgreSQL, Redis) and print its URLs
	APP_UID=$${APP_UID:-$$(id -u)} $(COMPOSE) up -d --build
	@echo "API:   http://localhost:8000/api/v1/public/health/ready"
	@echo "Docs:  http://localhost:8000/docs"
	@echo "Logs:  make logs    Stop: make down"

down: ## Stop the compose stack (data stays in its volumes)
	$(COMPOSE) down

logs: ## Follow the compose stack's API, worker and migration logs
	$(COMPOSE) logs -f api worker migrate

image: ## Build the production image (IMAGE=name:tag)
	docker build -f docker/Dockerfile -t $(IMAGE) .

secret: ## Print a strong random SECRET_KEY
	@$(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(48))'

rename: ## Rename the project: make rename name="Orders API" [ARGS=--dry-run]
	@test -n "$(name)" || { echo 'usage: make rename name="Orders API" [ARGS=--dry-run]' >&2; exit 2; }
	$(PYTHON) -m scripts.rename "$(name)" $(ARGS)

resource: install ## Add a resource on the kit: make resource name=orders [singular=order] [ARGS=--dry-run]
	@test -n "$(name)" || { echo 'usage: make resource name=orders [singular=order] [ARGS=--dry-run]' >&2; exit 2; }
	$(RUN) python -m scripts.resource "$(name)" $(if $(singular),--singular "$(singular)") $(ARGS)

# Autogenerate compares the models with the database, so the database is brought up to
# date first (alembic refuses to generate against one that is behind).
migrate: install ## Apply migrations; with m="message", autogenerate a revision first
ifdef m
	$(RUN) alembic upgrade head
	$(RUN) alembic revision --autogenerate -m "$(m)"
endif
	$(RUN) alembic upgrade head

prestart: install ## Wait for the database (bounded retries), then apply migrations
	$(RUN) python -m scripts.prestart $(ARGS)

webhooks-replay: install ## Re-run stored webhook events: ARGS="--failed", "--stuck" or "evt_..."
	$(RUN) python -m scripts.replay_webhooks $(ARGS)

token: install ## Print a local-provider token: make token sub=alice email=a@x.io roles=admin tenant=acme
	@$(RUN) python -m scripts.local_token --sub "$(sub)" --email "$(email)" --roles "$(roles)" --tenant "$(tenant)" --name "$(name)" --ttl "$(or $(ttl),0)"

# CI runs `make test CHECK_COVERAGE=1`: it fails when line + branch coverage falls below
# this floor, the level measured on PostgreSQL + Redis.
COVERAGE_FLOOR := 95

test: install ## Run the test suite with a coverage summary (TEST_DATABASE_URL / TEST_REDIS_URL select real services)
	$(RUN) pytest --cov --cov-report=term $(if $(CHECK_COVERAGE),--cov-fail-under=$(COVERAGE_FLOOR)) $(ARGS)

coverage: install ## Run the test suite and write an HTML coverage report to htmlcov/
	$(RUN) pytest --cov --cov-report=term --cov-report=html $(ARGS)
	@echo "open htmlcov/index.html" >&2

lint: install ## ruff check, ruff format --check and mypy --strict
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy app scripts tests

hooks: install ## Install the git pre-commit hooks (ruff, mypy, hygiene checks)
	$(RUN) pre-commit install

format: install ## Apply ruff fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

openapi: install ## Write the OpenAPI document to docs/openapi.json (no server needed)
	$(RUN) python -m scripts.openapi $(ARGS)

bench: install ## Benchmark the request path against a bare FastAPI app (scripts/bench.py)
	$(RUN) python -m scripts.bench $(ARGS)
