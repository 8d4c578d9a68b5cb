# Two entry points do all set-up on a fresh machine:
#   make demo   - install (once), train the founding example's models, run it on the embedded cluster
#   make test   - install (once), run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The http-parser wheel is cached per user and Python version, outside the clone, so it is built once.
PYTAG := $(shell $(PYTHON) -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
WHEELHOUSE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/mesos-ensemble/wheels-$(PYTAG)
DEMO_DIR := build/demo

.PHONY: install demo test faults lint bench clean
install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml scripts/build-http-parser.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	scripts/build-http-parser.sh "$(WHEELHOUSE)" $(PYTHON)
	$(BIN)/pip install -q --no-deps "$(WHEELHOUSE)"/http_parser-0.9.0-*.whl
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mesos-ensemble train-demo $(DEMO_DIR)
	$(BIN)/mesos-ensemble run $(DEMO_DIR)/job.toml

test: $(STAMP)
	$(BIN)/python -m pytest

# Every fault-injection test, the slow ones included (`make test` runs the quick ones).
faults: $(STAMP)
	$(BIN)/python -m pytest -m "" tests/faults

# Style, types and the architecture's import rules (contracts in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check framework executor tests bench vagrant
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/packing_bench.py
	$(BIN)/python bench/end_to_end_bench.py
	$(BIN)/python bench/io_thread_bench.py
	$(BIN)/python bench/journal_bench.py

clean:
	rm -rf $(VENV) build .pytest_cache
