# Two commands for a new user: `make run` and `make test`. Everything else is for developers.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT
# llama-cpp-python compiles from source (about five minutes). Built for a portable x86-64 baseline, not
# -march=native: a native build on these VMs emits AMX/AVX-512 code that dies with SIGILL ("Illegal
# instruction") on the first token, and a wheel built on one machine must run on the next. The wheel is
# kept outside the work tree, keyed by these flags, so a fresh clone (CI) installs it in seconds.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF
LLAMA_SPEC := $(shell sed -n 's/^ *"\(llama-cpp-python[^"]*\)",*$$/\1/p' pyproject.toml)
WHEELS ?= $(HOME)/.cache/agentplatform/wheels/$(shell echo '$(LLAMA_SPEC) $(LLAMA_CMAKE_ARGS)' | cksum | cut -d' ' -f1)
INSTRUCTOR_SPEC := instructor==1.17.0
# The stamp changes whenever pyproject.toml or the llama build does, so `make` reinstalls only then;
# the venv itself is never re-created.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)-$(notdir $(WHEELS))

# `make test` stays the one test command CI calls.
.PHONY: run test install secret-key migrate seed lint format worker beat bench clean-stamps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools

$(STAMP): $(BIN)/python pyproject.toml
	rm -f $(VENV)/.installed-*
	@ls $(WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || { \
	  echo "building llama-cpp-python (about five minutes, once per machine)"; \
	  rm -rf $(WHEELS) $(WHEELS).tmp; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --quiet --no-cache-dir --no-deps "$(LLAMA_SPEC)" -w $(WHEELS).tmp \
	  && mv $(WHEELS).tmp $(WHEELS); }
	$(BIN)/pip install --quiet --no-deps --force-reinstall $(WHEELS)/llama_cpp_python-*.whl
	$(BIN)/pip install --quiet -e ".[dev]"
	# instructor pins jiter<0.15, which the openai SDK excludes: installed without its pins for the client
	# tests (tests/agents/openai_compat/test_clients.py); its imports work with the newer jiter.
	$(BIN)/pip install --quiet --no-deps "$(INSTRUCTOR_SPEC)"
	touch $(STAMP)

install: $(STAMP)

# Settings refuse to start without SECRET_KEY (DEBUG off): the first run writes a random one to .env.
secret-key: $(BIN)/python
	$(BIN)/python config/launch.py secret-key

migrate: install secret-key
	$(BIN)/python manage.py migrate --noinput

seed: migrate
	$(BIN)/python manage.py seed_agents
	$(BIN)/python manage.py create_demo_user

# This server speaks plain HTTP on $(HOST): the HTTPS-only settings (on by default when DEBUG is off) are
# switched off for it unless set in the environment. Deployments behind TLS keep them (README: Security).
run: export SECURE_SSL_REDIRECT ?= false
run: export SESSION_COOKIE_SECURE ?= false
run: export CSRF_COOKIE_SECURE ?= false
# uvicorn (config/serve.py): forwarded headers believed only from TRUSTED_PROXIES (default none), as by the
# app; WEB_CONCURRENCY server processes (default 1), each with its own DB_POOL_MAX_SIZE connections and its
# own listening socket.
run: seed
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python -m config.serve --host $(HOST) --port $(PORT)

# The web console is tested in a real headless Chromium: Debian's package, since browsers cannot be
# downloaded here. Installed once; later runs find it.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "install chromium (or set CHROMIUM_PATH) for the console tests"; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

# The suite in TEST_WORKERS processes (pytest-xdist; 0: in this one). Half its time is spent waiting on
# live servers, workers and subprocesses, so two processes on two cores take 5.5 min instead of 10. Each has
# its own test database, fake providers, Celery worker and Redis key prefix. Tests are handed out one at a
# time (--dist load), not by file: schemathesis gives its 21 operations one test id, which --dist loadfile
# would run once.
TEST_WORKERS ?= 2
test: install $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/pytest -n $(TEST_WORKERS) --dist load $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Consumes the run queue and the reaper's maintenance queue (config/celery.py's task_queues).
worker: migrate
	$(BIN)/celery -A config worker --loglevel=INFO --concurrency=$${WORKER_CONCURRENCY:-4} --prefetch-multiplier=1

beat: migrate
	$(BIN)/celery -A config beat --loglevel=INFO

# Side by side with the raw SDK, LiteLLM and pydantic-ai (bench/run.py; contenders live in .venv-bench).
# Our server and the LiteLLM proxy both run WEB_CONCURRENCY processes (default: one per core).
bench: install secret-key
	$(BIN)/python bench/run.py
