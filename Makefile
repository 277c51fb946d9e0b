# Every target only calls the voc-pipeline CLI (or pytest); the stages live in the package.
# Variables: DATA (data root), PROFILE (smoke, cpu, kaggle or a .toml), RUN (run folder name), SET (extra --set).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CLI := $(BIN)/voc-pipeline
DATA ?= data/demo
PROFILE ?= cpu
RUN ?= default
SET ?=
DEMO_DATA := data/demo
# The TensorFlow build: the CUDA one where an NVIDIA driver answers, else the CPU one.
TF_EXTRA := $(shell nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
FORCE ?=
STAGE_ARGS = --data $(DATA) --profile $(PROFILE) --run $(RUN) $(foreach assignment,$(SET),--set $(assignment)) $(if $(FORCE),--force)
DEMO_ARGS = --data $(DEMO_DATA) --profile smoke --run demo

.PHONY: help install test test-fast lint demo demo-data data-check train train-cls tune train-seg submit predict \
	evaluate attack kernel-build kernel-check kaggle-push bench-submission bench-classifier bench-segmenter bench-predict clean

help:
	@echo "make demo        synthetic data -> trained models -> submissions/submission.csv"
	@echo "make train       DATA=... PROFILE=... RUN=...   data check, classifier, thresholds, segmenter"
	@echo "make submit      DATA=... PROFILE=... RUN=...   predict the test set, write submissions/submission.csv"
	@echo "make evaluate    DATA=... PROFILE=... RUN=...   validation scores and runs/RUN/report.md"
	@echo "make attack      DATA=... PROFILE=... RUN=...   adversarial examples, runs/RUN/attack/attack.md"
	@echo "make test        the test suite (creates $(VENV) if needed)"
	@echo "make data-check  DATA=... RUN=...   load, validate and split the data"
	@echo "make train-cls tune DATA=... PROFILE=... RUN=...   classifier and its thresholds"
	@echo "make train-seg DATA=... PROFILE=... RUN=...        segmenter"
	@echo "make kernel-check                  build the Kaggle bundle and run it on a simulated /kaggle tree"
	@echo "make kaggle-push KAGGLE_USER=...   upload the bundle with the kaggle CLI (needs your API token)"
	@echo "make lint        ruff"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,$(TF_EXTRA)]"
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check voc_pipeline tests kaggle

$(DEMO_DATA)/train/train_set.csv: | install
	$(CLI) data demo $(DEMO_DATA) --n-train 160 --n-test 40 --force

demo-data: $(DEMO_DATA)/train/train_set.csv

demo: demo-data
	$(CLI) data check $(DEMO_ARGS)
	$(CLI) train-cls $(DEMO_ARGS)
	$(CLI) tune $(DEMO_ARGS)
	$(CLI) train-seg $(DEMO_ARGS)
	$(CLI) predict $(DEMO_ARGS)
	$(CLI) submit $(DEMO_ARGS)
	$(CLI) evaluate $(DEMO_ARGS)
	$(CLI) score $(DEMO_DATA)/solution.csv submissions/submission.csv

data-check: install
	$(CLI) data check $(STAGE_ARGS)

train: data-check train-cls tune train-seg

submit: predict
	$(CLI) submit $(STAGE_ARGS)

predict: install
	$(CLI) predict $(STAGE_ARGS)

evaluate: install
	$(CLI) evaluate $(STAGE_ARGS)

attack: install
	$(CLI) attack $(STAGE_ARGS)

train-cls: install
	$(CLI) train-cls $(STAGE_ARGS)

tune: install
	$(CLI) tune $(STAGE_ARGS)

train-seg: install
	$(CLI) train-seg $(STAGE_ARGS)

KAGGLE_USER ?= local-check
BUNDLE ?= kaggle/bundle
QUICK := --set classifier.head_epochs=1 --set classifier.finetune_epochs=1 --set segmenter.head_epochs=1 \
	--set segmenter.finetune_epochs=1

kernel-build: install
	$(CLI) kernel build --output $(BUNDLE) --username $(KAGGLE_USER)

kernel-check: kernel-build demo-data
	$(CLI) kernel check --bundle $(BUNDLE) --data $(DEMO_DATA) $(QUICK)

kaggle-push: install
	@test "$(KAGGLE_USER)" != local-check || { echo "make kaggle-push needs KAGGLE_USER=<your Kaggle user name>"; exit 2; }
	$(BIN)/python -m pip install --quiet "kaggle>=1.6"
	$(CLI) kernel build --output $(BUNDLE) --username $(KAGGLE_USER)
	$(CLI) kernel push --bundle $(BUNDLE)

bench-submission: install
	$(CLI) bench submission

bench-classifier: install
	$(CLI) bench classifier --profile $(PROFILE)

bench-segmenter: install
	$(CLI) bench segmenter --profile $(PROFILE)

bench-predict: install
	$(CLI) bench predict --profile $(PROFILE)

clean:
	rm -rf runs $(DEMO_DATA)
