# One target per task; CI and people run the same commands.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup stack-up stack-down demo train ceiling segment test test-unit bench-score bench-stream bench-freshness lint check-deploy promtool clean

## setup: install system packages (Debian), the virtualenv and the project
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt deploy/local/install-system-packages.sh
	bash deploy/local/install-system-packages.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

## stack-up: start Kafka, Redis and PostgreSQL on 127.0.0.1 unless reachable
stack-up: setup
	$(PY) -m deploy.stack up

## stack-down: stop only the servers the project started, by PID
stack-down:
	@if [ -x $(PY) ]; then $(PY) -m deploy.stack down; fi

## demo: run the main job end to end on the real data
demo: setup
	$(PY) -m deploy.demo

## train: fill the offline store for the prequential folds when it lacks a day,
## then search, refit per test fold, verify, report and register the model
## (extra options in TRAIN_ARGS, see python -m training.prequential --help)
train: setup
	$(PY) -m deploy.train $(TRAIN_ARGS)

## ceiling: upper bound of the test metrics that any model can reach on the data
ceiling: setup
	$(PY) -m training.ceiling

## segment: cluster the offline store's customers and publish their segments
## (extra options in SEGMENT_ARGS, see python -m training.segmentation --help)
segment: stack-up
	$(PY) -m training.segmentation $(SEGMENT_ARGS)

## test: run the whole test suite against real servers
test: setup
	$(PY) -m pytest

## test-unit: run only the tests that need no server
test-unit: setup
	$(PY) -m pytest -m "not integration"

## bench-score: benchmark POST /score against a no-op route; needs Go for vegeta
VEGETA_VERSION := v12.13.0
bench-score: setup
	@command -v vegeta >/dev/null || test -x "$$(go env GOPATH)/bin/vegeta" || \
		go install github.com/tsenart/vegeta/v12@$(VEGETA_VERSION)
	PATH="$$PATH:$$(go env GOPATH)/bin" $(PY) -m load.bench_score

## bench-stream: replay every transaction through Kafka, Flink, Redis and Parquet
bench-stream: setup
	$(PY) -m load.bench_stream

## bench-freshness: time produced transactions until Redis has them, at 1,000/s
bench-freshness: setup
	$(PY) -m load.bench_stream --freshness-only

## lint: check formatting and common mistakes
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## check-deploy: validate docker-compose.yml, k8s/ and the monitoring files offline
## (the schemas are fetched once into .cache/; see docs/deploy.md)
check-deploy: setup
	nice -n 10 $(PY) -m deploy.check_deploy
	nice -n 10 $(PY) -m pytest -q tests/deploy/test_manifests.py tests/deploy/test_monitoring_metrics.py

## promtool: build promtool into .cache/bin for check-deploy; needs Go, and the
## build took 17 minutes at nice 10 on a busy 2-core machine
PROMTOOL_VERSION := v0.316.0
promtool:
	GOBIN=$(CURDIR)/.cache/bin nice -n 10 go install \
		github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)

clean: stack-down
	rm -rf .state reports
