# durachat: `make run` starts everything; `make test` runs the suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint bench install compose-config clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m services.run

test: lint
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test-fast: $(STAMP)
	$(PY) -m pytest -m "not e2e and not browser"

bench: $(STAMP)
	$(PY) -m bench.chat_bench
	$(PY) -m bench.runtime_bench
	$(PY) -m bench.failover_bench
	$(PY) -m bench.projector_bench
	$(PY) -m bench.limits_bench
	$(PY) -m bench.ai_bench
	$(PY) -m bench.cluster_bench
	$(PY) -m bench.observe_bench

# Fails, saying what to set, without DURACHAT_TOKEN_SECRET (as `docker compose up` does).
compose-config:
	docker-compose -f docker-compose.yml config --quiet
	docker-compose -f docker-compose.yml -f infra/nats/cluster/docker-compose.cluster.yml config --quiet

clean:
	rm -rf $(VENV) .pytest_cache
