# Everything a fresh machine needs: `make run` and `make test` install what they use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed
# What the attempt to install Debian's chromium said; the browser test skips with it when that failed.
BROWSER_STAMP := $(VENV)/.browser
# The example app (docs/apps.md), installed as an operator installs an app: found through its entry point.
EXAMPLE_APP := examples/apps/julia-set
EXAMPLE_APP_STAMP := $(VENV)/.example-app
# JupyterHub's proxy, from npm, for the tests on a real hub.
PROXY := $(VENV)/node/node_modules/.bin/configurable-http-proxy

.PHONY: install run test test-unit soak bench image clean

install: $(STAMP) $(TOOLS_STAMP)

# client/pyproject.toml too: requirements-test.txt installs the client from it.
$(STAMP): requirements.txt requirements-test.txt client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $(STAMP)

$(TOOLS_STAMP): requirements-tools.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check -r requirements-tools.txt
	touch $(TOOLS_STAMP)

$(EXAMPLE_APP_STAMP): $(STAMP) $(EXAMPLE_APP)/pyproject.toml $(wildcard $(EXAMPLE_APP)/*/*.py)
	$(BIN)/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./$(EXAMPLE_APP)
	touch $@

$(BROWSER_STAMP): $(STAMP)
	devtools/install_chromium.sh > $@ 2>&1 || true

$(PROXY): $(STAMP)
	npm install --prefix $(VENV)/node --no-audit --no-fund --loglevel=error configurable-http-proxy@5.3.0

# The service on its embedded defaults: S3 server and gateway on 127.0.0.1.
run: $(STAMP)
	$(BIN)/python -m devtools.run_local

# The whole suite: unit tests, the real stack (S3 server, Dask, gunicorn, Dask
# Gateway) and the offline checks of the Kubernetes and image artifacts.
test: $(STAMP) $(TOOLS_STAMP) $(EXAMPLE_APP_STAMP) $(BROWSER_STAMP) $(PROXY)
	$(BIN)/python -m pytest

test-unit: $(STAMP) $(TOOLS_STAMP) $(EXAMPLE_APP_STAMP)
	$(BIN)/python -m pytest tests/unit

# The slow part of the reliability checks, at scale: 3000 jobs from 16 clients,
# 1000 fuzzed requests per API operation, the fault tests, then the audit of
# secrets over everything they left. 22 minutes on 2 cores, measured.
soak: $(STAMP)
	LOAD_JOBS=3000 FUZZ_EXAMPLES=1000 SEAWEED_RACE_ROUNDS=20 $(BIN)/python -m pytest --timeout 7200 \
		tests/integration/test_load.py tests/integration/test_api_fuzz.py \
		tests/integration/test_faults.py tests/integration/test_seaweed_store.py tests/integration/test_secrets_audit.py

# Speed and memory against floors of the same objects written with obstore, and the plain Dask approach: prints the
# table and targets, writes bench/results/latest.{json,png}, updates docs/contributing.md.
bench: $(STAMP)
	$(BIN)/python -m bench

# The product image, for the gateway and its Dask clusters alike. IMAGE names it;
# DOCKER_BUILD_FLAGS go to docker build, e.g. --build-arg PIP_INDEX_URL=<a mirror>, or
# --build-arg GATEWAY_APP_PACKAGES=./examples/apps/julia-set for apps of your own (docs/apps.md).
IMAGE ?= science-gateway:dev
DOCKER_BUILD_FLAGS ?=
image:
	docker build $(DOCKER_BUILD_FLAGS) --tag $(IMAGE) .

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache
