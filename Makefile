# The two commands from the README. Both install what they need and are safe to run twice.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test install lint clean

install:
	bash scripts/bootstrap.sh

# Only what tierfs needs to run. DROP_CACHES=1 (as root) also drops the whole
# machine's page cache between passes; by default only the demo's own files' pages go.
demo:
	bash scripts/bootstrap.sh runtime
	$(PY) scripts/demo.py $(if $(DROP_CACHES),--drop-caches)

test: install lint
	$(PY) -m pytest -q -p no:cacheprovider tests

lint:
	$(VENV)/bin/ruff check tierfs tests scripts $(wildcard benchmarks)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info
