# `make run`: set up and materialize every asset on $(NESTED_CONFIG) (default configs/emoji.yaml).
# `make test`: set up and run the test suite. Both install everything they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
EMOJI_TGZ := data/emoji-datasource-google-16.0.0.tgz
export NESTED_HOME ?= $(CURDIR)/.nested
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: setup run test ui clean-artifacts
setup: $(VENV)/.installed $(EMOJI_TGZ)

# torch==2.14.1 / torchvision==0.29.1 come from this machine's local wheels (see pyproject.toml).
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# The emoji dataset is an npm package: `npm pack` fetches its tgz from the registry; it is read in place.
$(EMOJI_TGZ):
	mkdir -p data
	cd data && npm pack emoji-datasource-google@16.0.0 --silent >/dev/null
	test -s $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

run: setup $(DAGSTER_HOME)/dagster.yaml
	time $(VENV)/bin/dagster asset materialize -m assets.definitions --select '*'
	$(VENV)/bin/python -m pipeline.plan
	$(VENV)/bin/python -m assets.run_report

test: setup
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

ui: setup $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean-artifacts:
	rm -rf $(NESTED_HOME)

# What the UI shows stale or missing and why, and the command that rematerializes exactly those and their
# downstream (STALE_ARGS="--url http://127.0.0.1:3000 --launch" runs it through the UI's webserver).
.PHONY: stale
stale: setup $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/python -m assets.stale $(STALE_ARGS)

# What no config in configs/ (nor a materialization of the last 30 days) refers to under $(NESTED_HOME), with
# sizes: a dry run. GC_ARGS="--delete" removes it; GC_ARGS="--keep-days 7 configs/emoji.yaml" (docs/caching.md).
.PHONY: gc
gc: setup
	$(VENV)/bin/python -m assets.gc $(GC_ARGS)
