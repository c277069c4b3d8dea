# Tessera. `make test` and `make serve` work on a fresh machine: they create .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test

.PHONY: test lint protos clean serve models bench chaos

$(STAMP): pyproject.toml exporter/_example_scan.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: $(STAMP) lint
	$(PY) -m pytest

# mypy's settings and the parts it does not check yet are in pyproject.toml ([tool.mypy]).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m mypy

protos: $(STAMP)
	$(PY) -m protos.generate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The example models (iris, diabetes), exported once, and a model config that serves both.
MODELS := $(CURDIR)/models

models: $(STAMP)
	$(PY) -m examples.export_models --base $(MODELS) --if-missing
	printf 'model_config_list {\n  config { name: "iris" base_path: "%s/iris" model_platform: "tensorflow" }\n  config { name: "diabetes" base_path: "%s/diabetes" model_platform: "tensorflow" }\n}\n' "$(MODELS)" "$(MODELS)" > $(MODELS)/models.config

serve: models
	$(VENV)/bin/tessera serve --port=8500 --rest_api_port=8501 --model_config_file=$(MODELS)/models.config

# Tessera vs. a plain grpc.aio server vs. Ray Serve on one model (issue 4); ~3-4 minutes on 2 cores.
# Writes benchmarks/results.{md,png,json}. Not a test: `make test` never runs it.
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS ?=

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	command -v h2load >/dev/null 2>&1 || apt-get install -y -q nghttp2-client || \
		echo "h2load (Debian's nghttp2-client) not installed: benchmarks.gateways --client h2load needs it"
	touch $@

bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.run $(BENCH_ARGS)

# Fault and hostile-input scenarios (issue 9), one line each: requests sent, failed, worst latency,
# RSS peak. Bounded in time; loopback or a local two-node Ray only. `CHAOS_ARGS=--fast` for the quick ones.
CHAOS_ARGS ?=
chaos: $(STAMP)
	$(PY) -m benchmarks.chaos $(CHAOS_ARGS)
