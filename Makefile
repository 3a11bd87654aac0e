# falq: the two commands a newcomer needs are `make demo` and `make test`.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test redis-server prometheus lint typecheck contracts unit integration system chaos chaos-net bench bench-quick bench-connections soak clean screenshots docs docs-gen

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

## make demo: start Redis, S3, the fal emulator and a worker locally; run real jobs; save the images.
demo: install redis-server
	$(BIN)/python -m falq.ops.demo $(ARGS)

# The demo and the tests start their own redis-server; on a bare Debian machine (as root) it is
# installed from Debian's packages, elsewhere the message says what to install.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server from Debian's packages"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	  else echo "falq needs redis-server on PATH (Debian: apt-get install redis-server)"; exit 1; fi; }

# tests/system/test_prometheus_*.py run Debian's prometheus and promtool (their own process, on a free port).
prometheus:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing prometheus from Debian's packages"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq prometheus >/dev/null; \
	  else echo "falq's tests need prometheus and promtool on PATH (Debian: apt-get install prometheus)"; exit 1; fi; }

# Two processes (pytest-xdist), one test file each at a time: most tests wait on real servers,
# so two halve the wall time on a 2-core machine; each process starts its own stack on free ports.
# Three were faster (13-15 min against about 17) but the CPU-bound suite then stretched
# load-sensitive tests past their bounds in 2 of 6 clean-clone runs.
TEST_PROCS ?= 2

## make unit: the tests that need no server (tests/unit): pure modules, the fal client through
## httpx.MockTransport, the public API and error tree, the architecture. Under a minute.
# Plugins are not auto-loaded here: hypothesis and schemathesis (system tests only) take seconds to import.
unit: install
	PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 $(BIN)/python -m pytest -q -p no:cacheprovider -p pytest_timeout tests/unit

## make integration: tests/integration: a real redis-server and servers in this process (the fal
## emulator, moto's S3, the gateway); no worker processes.
integration: install redis-server
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_PROCS) --dist loadfile tests/integration

## make system: tests/system: the whole stack with worker processes, browsers, Prometheus,
## PostgreSQL, the official fal clients, the wheel.
system: install redis-server prometheus
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_PROCS) --dist loadfile tests/system

## make test: lint, type-check and run the whole default suite, every tier (starts its own servers).
test: install redis-server prometheus lint typecheck contracts docs
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_PROCS) --dist loadfile --durations=25

# The Redis scripts (shared/lua/*.lua, settings in .luacheckrc) are linted by luacheck (Debian:
# `apt-get install lua-check`); tests/integration/test_redis_scripts.py also loads each into a real Redis.
lint: install
	$(BIN)/ruff check falq/__init__.py shared workers producers emulator ops gateway cli testing tests
	@command -v luacheck >/dev/null 2>&1 || { echo "need luacheck for the Lua scripts (apt-get install lua-check)"; exit 1; }
	luacheck --no-color -q shared/lua/*.lua

typecheck: install
	$(BIN)/mypy

# The layers (pyproject [tool.importlinter]): cli > ops > testing > gateway > producers > workers | emulator > shared.
contracts: install
	$(BIN)/lint-imports --no-cache

## make docs: build the documentation site strictly (a broken link or anchor fails) into build/site,
## after checking that the generated reference pages match the code.
docs: install
	$(BIN)/python -m falq.cli.docsgen --check
	$(BIN)/python -m falq.ops.redis_layout --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

## make docs-gen: regenerate docs/reference/{configuration,cli,rest-api,errors,redis-layout}.md from the code.
docs-gen: install
	$(BIN)/python -m falq.cli.docsgen
	$(BIN)/python -m falq.ops.redis_layout

chaos: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m chaos tests/chaos

## make chaos-net: network partitions (root: netns, veth, iptables): a worker host cut off from
## Redis, from fal and from S3 for 60 s each while it holds jobs, then healed (about 8 minutes).
## `make chaos` runs the quick variant (30 s cuts, 9 jobs).
chaos-net: install redis-server
	FALQ_CHAOS_NET_FULL=1 $(BIN)/python -m pytest -q -s -p no:cacheprovider -m chaos tests/chaos/test_partitions.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache build/site

## make bench: the full benchmark docs/benchmarks.md reports (falq beside its references; table + docs/bench.png).
bench: install
	$(BIN)/python -m falq.ops.bench

## make bench-quick: the same scenarios scaled down, about seven minutes on a 2-core machine.
bench-quick: install
	$(BIN)/python -m falq.ops.bench --quick

## make bench-connections: HTTP calls and connections per job to fal (15 s stream heartbeats,
## 5-60 s latencies), beside fal-client in the same run.
bench-connections: install
	$(BIN)/python -m falq.ops.bench --only connections

## make screenshots: the web console's pictures in the docs (docs/console-*.png) from a real run in Chromium.
screenshots: install redis-server
	$(BIN)/python -m falq.ops.screenshots $(ARGS)

## make soak: 50,000 bulk jobs (default) through 2 workers; RSS, Redis memory, leftover keys,
## fds and connections must stay bounded (exit 1 if not). Smaller: make soak ARGS="--jobs 3000".
## Not part of make test.
soak: install redis-server
	$(BIN)/python -m falq.ops.soak $(ARGS)
