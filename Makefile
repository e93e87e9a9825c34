# Everything a fresh machine needs: `make run` and `make test` install what they use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-unit clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $(STAMP)

# The service on its embedded defaults: S3 server and gateway on 127.0.0.1.
run: $(STAMP)
	$(BIN)/python -m devtools.run_local

# The whole suite: unit tests, then the real stack (S3 server, Dask, gunicorn, Dask Gateway).
test: $(STAMP)
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

clean:
	rm -rf $(VENV) .pytest_cache
