# Lathe developer entry points. The two that matter:
#   make demo   boot the platform on embedded Postgres + NATS and run the workflow end to end
#   make test   the whole test suite (lint, proto lint, pytest against real Postgres + NATS, Bazel)
# Both bootstrap what they need (virtualenv, pinned packages, generated stubs).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SITE := $(VENV)/lib/python3.11/site-packages
INSTALLED := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto' | sort)
GEN := gen/python
GENERATED := $(GEN)/.generated
BAZEL_FLAGS := --nosandbox_debug

TOOLS := .tools/bin

.PHONY: venv gen tools demo test lint format pytest lint-protos breaking contract bench bench-report bazel bazel-install up down clean

venv: $(INSTALLED)

$(INSTALLED): requirements/lock.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	echo "$(CURDIR)/$(GEN)" > $(SITE)/lathe_generated_protos.pth
	touch $@

gen: $(GENERATED)

# Stubs are generated, never edited (and never committed: gen/ is ignored).
$(GENERATED): $(PROTOS) $(INSTALLED)
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -I protos --python_out=$(GEN) --pyi_out=$(GEN) --grpc_python_out=$(GEN) $(PROTOS)
	touch $@

demo: gen
	$(VENV)/bin/lathe demo

up: gen
	$(VENV)/bin/lathe up

down: venv
	$(VENV)/bin/lathe down

test: lint lint-protos breaking pytest bazel

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

lint-protos: venv
	cd protos && ../$(VENV)/bin/buf lint

# Event and API schemas evolve only backward-compatibly: `breaking` (part of `test`)
# compares them with protos/contract.binpb, the image of the published contract.
# After an intended, compatible addition run `make contract` and commit the new image;
# an incompatible change needs a new package version (lathe.<service>.v2) instead.
breaking: venv
	cd protos && ../$(VENV)/bin/buf breaking --against contract.binpb

contract: venv
	cd protos && ../$(VENV)/bin/buf build -o contract.binpb

# Command-line tools some tests drive (promtool), fetched into .tools/ (ignored).
tools:
	bash infra/tools/fetch-promtool.sh $(TOOLS)

pytest: gen tools
	PATH="$(CURDIR)/$(TOOLS):$$PATH" $(PY) -m pytest

bench: gen
	$(PY) -m bench

# One report of every family: each figure beside its baseline, each issue's goal met or
# missed, Markdown + JSON + PNG plots under bench/results/report-<timestamp>/.
# BENCH_ARGS="--quick" for small sizes; BENCH_ARGS="--from bench/results" to report
# runs already finished without running anything.
BENCH_ARGS ?=
bench-report: gen
	$(PY) -m bench --report $(BENCH_ARGS)

bazel-install:
	command -v bazel >/dev/null || (apt-get install -y -qq bazel-bootstrap >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq bazel-bootstrap >/dev/null))

bazel: bazel-install venv
	bazel build $(BAZEL_FLAGS) //...
	bazel test $(BAZEL_FLAGS) --test_output=errors //...

clean:
	rm -rf $(GEN) .pytest_cache .ruff_cache
	-bazel clean 2>/dev/null
