# The two commands from the README. Both install what they need and are safe to run twice.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test install lint clean

install:
	bash scripts/bootstrap.sh

demo: install
	$(PY) scripts/demo.py

test: install lint
	$(PY) -m pytest -q -p no:cacheprovider tests

lint:
	$(VENV)/bin/ruff check tierfs tests scripts $(wildcard benchmarks)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info
