# tokengate: `make run` runs the service on its embedded defaults; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERVER_STAMP := $(VENV)/.installed-server

.PHONY: install run test lint format bench bench-servers clean

install: $(STAMP)

# Two stamps: `make run` installs the service alone (the [server] extra), quickly;
# `make install`, `make test` and `make lint` add the development tools ([dev]).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $(SERVER_STAMP)

# uv installs the service's ~40 packages in seconds where pip takes half a minute;
# should uv not install, pip does the same job.
$(SERVER_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	{ $(BIN)/python -m pip install --quiet uv && \
		$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[server]'; } || \
		$(BIN)/python -m pip install --quiet -e '.[server]'
	touch $(SERVER_STAMP)

run: $(SERVER_STAMP)
	$(BIN)/tokengate serve $(RUN_ARGS)

# Test files run on as many workers as the machine has cores (at most 4), each with
# its own private redis-server and PostgreSQL; `make test PYTEST_WORKERS=` runs one.
PYTEST_WORKERS ?= -n auto --maxprocesses=4 --dist loadfile

# The suite starts hundreds of Python processes (services, commands, clients, pytest
# runs of the docs' test modules): they keep their bytecode, in __pycache__ folders git
# ignores. With PYTHONDONTWRITEBYTECODE=1 each would compile the package from source again
# (0.4 s) and each pytest run rewrite its plugins' asserts again (2 s).
test: $(STAMP)
	@./.ci/browser  # Debian's chromium for the browser tests, when it is missing
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -q $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	@! grep -rnE '^\s*(from|import) (service|client)([. ]|$$)' service client || \
		{ echo "lint: import quart_tokengate.service / quart_tokengate.client, not service / client"; exit 1; }
	@! grep -rnE '^\s*(from|import) quart_schema' service || \
		{ echo "lint: document routes with service/openapi.py (document, hidden), not quart_schema"; exit 1; }
	$(BIN)/ruff check service client tests bench examples
	$(BIN)/ruff format --check service client tests bench examples
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format service client tests bench examples
	$(BIN)/ruff check --fix service client tests bench examples

# The peers run from their own venvs, built here on first use and nowhere else:
# Flask-JWT-Extended in bench/peers/.venv, each other peer in bench/peers/<peer>/.venv,
# from the pinned bench/peers/<peer>/requirements.txt.
PEER_VENV := bench/peers/.venv
PEER_STAMP := $(PEER_VENV)/.installed
PEERS := fastapi_users_redis authx_redis simplejwt
PEER_VENVS := $(PEER_VENV) $(foreach p,$(PEERS),bench/peers/$(p)/.venv)
PEER_STAMPS := $(PEER_STAMP) $(foreach p,$(PEERS),bench/peers/$(p)/.venv/.installed)
# What only the bench needs in the service's venv (matplotlib for bench/results.png):
# not a runtime dependency, and not in [dev], so that CI and `make install` skip it.
BENCH_STAMP := $(VENV)/.installed-bench

$(PEER_STAMP): bench/peers/flask_jwt/requirements.txt
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet -r bench/peers/flask_jwt/requirements.txt
	touch $(PEER_STAMP)

bench/peers/%/.venv/.installed: bench/peers/%/requirements.txt
	test -x bench/peers/$*/.venv/bin/python || $(PYTHON) -m venv bench/peers/$*/.venv
	bench/peers/$*/.venv/bin/python -m pip install --quiet -r $<
	touch $@

$(BENCH_STAMP): $(STAMP) bench/requirements.txt
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP) $(PEER_STAMPS)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-servers: $(STAMP)
	$(BIN)/python -m bench.servers

clean:
	rm -rf $(VENV) $(PEER_VENVS) instance .pytest_cache .mypy_cache .ruff_cache
