# make demo: set everything up and run the embedded-default comparison; make test: the default test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/harness sweep sweeps/quickstart.yaml
	$(BIN)/harness report --sweep quickstart --out reports/table2.md --overwrite  # the demo regenerates its own table
	@echo
	@echo "table:  reports/table2.md (CSV beside it: reports/table2.csv)"
	@echo "figure: reports/table2.png"
	@echo "MLflow: sqlite:///$(CURDIR)/mlflow.db (experiment 'quickstart'); browse it with: $(BIN)/harness ui"

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf .harness mlflow.db mlruns $(filter-out %.yaml,$(wildcard reports/table2.* reports/robustness.*))

bench: $(STAMP)
	$(BIN)/python bench/flops.py
	$(BIN)/python bench/step.py --size tiny
	$(BIN)/python bench/step.py --size small
	$(BIN)/python bench/overhead.py --method vanilla
	$(BIN)/python bench/overhead.py --method mbt
	$(BIN)/python bench/data.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/frozen_cache.py
	$(BIN)/python bench/sweep_overhead.py --clips 2400 --epochs 10 --repeat 1 --no-fresh
