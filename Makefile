# Two entry points for a fresh clone: `make demo` and `make test` (both create .venv first).
# `make test` runs every tier, as CI does; test-unit, test-spark and test-e2e run one (CONTRIBUTING.md says what
# each needs), `make lint` runs ruff.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-unit test-spark test-e2e lint install jars

# uv (from PyPI) resolves and installs the same packages as pip, in parallel and from a shared cache, so a fresh
# .venv on a machine with a warm cache (CI's case) takes a fraction of pip's time.
$(BIN)/persona-spark: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e ".[spark,dev,train,embed,mlflow,graph]"
	touch $@

install: $(BIN)/persona-spark

# Spark's Delta connector and hadoop-aws, resolved from Maven Central once per machine into ~/.cache/persona-spark/ivy.
jars: install
	$(BIN)/python -m persona_spark.runtime.session

demo: jars
	$(BIN)/persona-spark demo --conf conf/local.yaml

# Two pytest workers, one test file each at a time (module fixtures stay shared): most of a Spark test's time is
# waiting, not computing. --no-loadscope-reorder keeps the files in collection order (tests/conftest.py puts the
# end-to-end and the longest files first); xdist's default reorders them by test count, which starts them last.
XDIST := -n 2 --dist loadfile --no-loadscope-reorder

# pytest exits 5 when it collected no test; that is a failure to report, not a crash to hide,
# but CI only treats it as red if something actually failed.
define run_pytest
	$(BIN)/python -m pytest -q --durations=15 $(1); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc
endef

test: jars
	$(call run_pytest,$(XDIST) tests)

# No JVM and no jars. One process: the unit tests compute rather than wait, so a second worker on two cores
# mostly repeats the imports and collection.
test-unit: install
	$(call run_pytest,tests/unit)

test-spark: jars
	$(call run_pytest,$(XDIST) tests/spark)

test-e2e: jars
	$(call run_pytest,$(XDIST) tests/e2e)

lint: install
	$(BIN)/ruff check .
