# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check lint typecheck imports pytest chromium compose fuzz bench wrk clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/gateway serve

test: $(STAMP) check pytest

check: lint typecheck imports

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench

typecheck: $(STAMP)
	$(BIN)/mypy gateway

imports: $(STAMP)
	$(BIN)/lint-imports

# Three workers on this two-core machine: many tests wait on live servers, MLLP peers and a browser, so a
# third worker overlaps the waits (measured on a clean clone: 8 min 21 s of tests with two, 7 min 41 s
# with three, all passing).
PYTEST_WORKERS ?= 3

# The tests that wait (tests/integration, tests/browser, `slow`) are collected first (tests/conftest.py) and
# handed out one at a time, so that each worker takes some of them early: xdist's default first hand-out is
# a block of consecutive tests per worker, which gave them all to one worker.
pytest: $(STAMP) chromium compose
	GATEWAY_TEST_CHROMIUM=$(CHROMIUM) GATEWAY_TEST_COMPOSE=$(COMPOSE) \
		$(BIN)/pytest -q -n $(PYTEST_WORKERS) --maxschedchunk 1

# The browser tests (tests/browser) drive Debian's Chromium through Playwright, never a browser Playwright
# downloads. Installed here where missing, as root only. This target never stops the build: without
# Chromium the browser tests fail (they do not skip: CI must run them) and say how to install it.
CHROMIUM ?= /usr/bin/chromium
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
chromium:
	@if [ -x "$(CHROMIUM)" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "*** $(CHROMIUM) is missing and this is not root: run 'sudo $(APT_INSTALL)'." \
			"The browser tests will fail until then." >&2; exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "*** $(CHROMIUM) is missing and apt-get is not available: the browser tests will fail." >&2; \
		exit 0; fi; \
	$(APT_INSTALL) || { apt-get update && $(APT_INSTALL); } \
		|| echo "*** installing chromium failed: the browser tests will fail." >&2

# Debian's docker-compose checks docker-compose.yml (`docker-compose config`) in the tests; images are
# neither pulled nor built here (no registry access), README: Docker.
COMPOSE ?= /usr/bin/docker-compose
APT_COMPOSE := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-compose
compose:
	@if [ -x "$(COMPOSE)" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "*** $(COMPOSE) is missing: run 'sudo $(APT_COMPOSE)'; the compose test will fail." >&2; \
		exit 0; fi; \
	$(APT_COMPOSE) || { apt-get update && $(APT_COMPOSE); } \
		|| echo "*** installing docker-compose failed: the compose test will fail." >&2

# The fuzz tests' long profile: many more examples per target, random (GATEWAY_FUZZ_SEED=<int> repeats a run);
# `make test` runs the same tests in their small, derandomized profile.
fuzz: $(STAMP)
	GATEWAY_FUZZ_PROFILE=long $(BIN)/pytest -q tests/fuzz --hypothesis-show-statistics

# `make bench` drives HTTP with wrk (a native load generator: the client costs the shared cores little),
# installed with apt where missing, as Chromium is.
bench: $(STAMP) wrk
	$(BIN)/python -m bench

wrk:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk || \
		  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk; }; }; } \
		|| echo "*** wrk is missing: 'sudo apt-get install wrk'; the server-cpu benchmark needs it." >&2

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis test-output
