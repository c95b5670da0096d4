# appproxy developer entry points.  Everything runs from a virtualenv that
# this Makefile creates and keeps in step with the sources.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SOURCES := $(shell find appproxy twisted -name '*.py') pyproject.toml setup.cfg

.PHONY: demo test lint bench install clean system-deps

$(VENV)/.installed: $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check '.[dev]'
	touch $@

install: $(VENV)/.installed

# oidc-provider (npm), the independent OpenID provider of the interop tests.
tests/interop/node_modules/.installed: tests/interop/package.json tests/interop/package-lock.json
	npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error
	touch $@

## Run the service, a connector and a header-echo app on localhost.
demo: install
	$(PY) -m appproxy.cli.demo run

## Run the whole test suite (trial); the last line reads "N passed, N failed".
test: system-deps install tests/interop/node_modules/.installed
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(PY) tools/run_tests.py

# Programs pip cannot bring (Node.js, Chromium, h2load, systemd-analyze...),
# installed with apt when missing.
system-deps:
	bash tools/system_deps.sh

lint: install
	$(VENV)/bin/ruff check appproxy tests benchmarks tools twisted
	$(VENV)/bin/ruff format --check appproxy tests benchmarks tools twisted
	$(VENV)/bin/mypy

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp* .demo
