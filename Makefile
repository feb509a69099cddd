# neurocache — every target bootstraps the virtualenv it needs.
# Variables (override on the command line: make cache DATA=/path/to/DATA STORE=/scratch/ct.zarr):
DATA   ?= data/demo
STORE  ?= store.zarr
CONFIG ?= configs/default.yaml
OUT    ?= outputs
CV_RUN ?=
INPUT  ?=
ARGS   ?=
PYTHON ?= python3

# modules mypy checks in make lint (the typed contracts; the rest is checked by ruff only)
TYPED  := neurocache/config.py neurocache/geometry.py neurocache/execution.py neurocache/build/plan.py \
          trainer/config.py trainer/runs/results.py trainer/runs/files.py trainer/context.py trainer/split.py trainer/evaluation \
          trainer/precision.py trainer/ema.py trainer/shift trainer/saliency neurocache/synth/truth.py

VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install synth validate cache info cv final demo predict runs notebook test lint bench bench-saliency bench-scale bench-shift clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12
	@echo "Open the notebook in Jupyter: $(BIN)/pip install jupyterlab, then $(BIN)/jupyter lab $(OUT)/eda_executed.ipynb"
	@echo "  (the executed copy from make notebook) or notebooks/eda.ipynb (edit its parameters cell); VS Code opens both too."

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install neurocache with pinned dependencies

synth: $(STAMP)  ## write the synthetic demo dataset into $(DATA)
	$(BIN)/neurocache synth $(DATA) --patients 100 --slices-per-patient 6 --seed 0

validate: $(STAMP)  ## check $(DATA)'s structure and labels
	$(BIN)/neurocache validate --data-root $(DATA)

cache: $(STAMP)  ## build $(STORE) from $(DATA) (no-op when complete with the same inputs and parameters)
	$(BIN)/neurocache build --data-root $(DATA) --store $(STORE) --config $(CONFIG)

info: $(STAMP)  ## summarise $(STORE)
	$(BIN)/neurocache info $(STORE)

cv: $(STAMP)  ## cross-validate on $(STORE) with $(CONFIG); writes $(OUT)/run_*_cv
	$(BIN)/python -m trainer cv --store $(STORE) --config $(CONFIG) --out $(OUT)

final: $(STAMP)  ## final model + held-out test from CV_RUN (default: the latest cv run in $(OUT))
	$(BIN)/python -m trainer final --cv-run $(or $(CV_RUN),$(shell ls -d $(OUT)/run_*_cv 2>/dev/null | sort | tail -n 1)) --store $(STORE) --out $(OUT)

demo: $(STAMP)  ## synth -> cache -> cv -> final on configs/demo.yaml (about 12 minutes on 2 CPU cores with bf16; ends with promise vs delivery)
	$(MAKE) synth cache cv final CONFIG=configs/demo.yaml STORE=demo.zarr DATA=$(DATA) OUT=$(OUT)

predict: $(STAMP)  ## score INPUT (DICOM files/folders) with RUN (default: the latest final run in $(OUT)) -> $(OUT)/predictions.csv
	$(BIN)/python -m trainer predict --run $(or $(RUN),$(shell ls -d $(OUT)/run_*_final* 2>/dev/null | sort | tail -n 1)) $(INPUT) --out $(OUT)/predictions.csv

runs: $(STAMP)  ## every cv/final run in $(OUT) side by side (python -m trainer runs; add ARGS="--sort cv_auprc --plot runs.png")
	$(BIN)/python -m trainer runs --out $(OUT) $(ARGS)

notebook: $(STAMP)  ## execute notebooks/eda.ipynb on $(STORE) and $(OUT) -> $(OUT)/eda_executed.ipynb (see below to open it)
	$(BIN)/python -m neurocache.notebook notebooks/eda.ipynb --set STORE=$(STORE) --set OUTPUTS=$(OUT) --to $(OUT)/eda_executed.ipynb

test: $(STAMP)  ## run the test suite
	$(BIN)/python -m pytest -q

lint: $(STAMP)  ## ruff on every package and the tests; mypy on the typed modules (configs, results, plan, evaluation, ...)
	$(BIN)/ruff check neurocache trainer tests bench
	$(BIN)/mypy $(TYPED)

BENCH_STAMP := $(VENV)/.bench-installed

# MONAI (baseline (b)) is optional: when it cannot be installed, bench.run skips (b) and says so.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[bench]' || echo "bench: MONAI could not be installed; baseline (b) will be skipped"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## benchmarks (3-6 min on 2 cores): writes bench/results.json and docs/benchmarks.md, prints the tables
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.context  # 2.5D streaming cost -> bench/context_results.json (docs/benchmarks.md, Neighbour context)
	$(BIN)/python -m bench.training  # training step by precision / memory format / compile -> bench/training_results.json

bench-shift: $(STAMP)  ## predict's time with and without the distribution-shift check: RUN (default: the latest final run in $(OUT)) on INPUT (default $(DATA)/CTs) -> docs/benchmarks.md
	$(BIN)/python -m bench.shift --run $(or $(RUN),$(shell ls -d $(OUT)/run_*_final* 2>/dev/null | sort | tail -n 1)) $(or $(INPUT),$(DATA)/CTs)

SCALE_WORK ?= bench/work/scale
SCALE_ARGS ?=

bench-saliency: $(STAMP)  ## predict with and without --saliency on 1,000 phantom slices with RUN (default: the latest final run in $(OUT)): docs/benchmarks.md "Saliency"
	$(BIN)/python -m bench.saliency --run $(or $(RUN),$(shell ls -d $(OUT)/run_*_final* 2>/dev/null | sort | tail -n 1))

bench-scale: $(STAMP)  ## every command at 10k and 100k files (SCALE_ARGS=--with-1m adds 1M): docs/benchmarks.md "Scale" (~30 min on 2 cores, ~6 GB in SCALE_WORK)
	$(BIN)/python -m bench.scale --work $(SCALE_WORK) $(SCALE_ARGS)

clean:  ## remove the demo data, stores and runs (not .venv)
	rm -rf data/demo store.zarr demo.zarr $(OUT)
