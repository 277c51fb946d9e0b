# Every target only calls the voc-pipeline CLI (or pytest); the stages and their order live in the package's
# stage graph (voc_pipeline/graph.py). A stage target runs every stage up to it that is not current, like make.
# Variables: DATA (data root), PROFILE (smoke, cpu, kaggle or a .toml), RUN (run folder name), SET (extra --set),
# FORCE=1 (rerun the target's own stage even if it is current).
# Kaggle targets: KAGGLE_USER (your user name), COMPETITION (this year's slug; default: the assignment 2
# competition you entered, asked from Kaggle), KAGGLE_DATA (where kaggle-data unpacks the data when DATA is not
# given).

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
# The test suite runs on this many processes (pytest-xdist), at most 4: each holds its own TensorFlow, and most tests
# keep one core busy. Whole runs shared by several tests stay on one process (tests/conftest.py).
TEST_PROCESSES ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
PARALLEL_TESTS = -n $(TEST_PROCESSES) --dist loadgroup
# With several test processes, each TensorFlow computes an op on one thread: more would wait for the cores
# the other processes hold.
TEST_THREADS = $(if $(filter-out 1,$(TEST_PROCESSES)),TF_NUM_INTRAOP_THREADS=1)
STAGE_ARGS = --data $(DATA) --profile $(PROFILE) --run $(RUN) $(foreach assignment,$(SET),--set $(assignment)) $(if $(FORCE),--force)
DEMO_ARGS = --data $(DEMO_DATA) --profile smoke --run demo

STAGE_TARGETS := train-cls train-seg tune refit predict submit evaluate attack

.PHONY: help install test test-large test-fast test-kaggle-stack lint demo demo-data data-check train status $(STAGE_TARGETS) \
	kernel-build kernel-check kaggle-data kaggle-push kaggle-train kaggle-status kaggle-output kaggle-submit bench-submission bench-classifier \
	bench-segmenter bench-predict bench-determinism clean

help:
	@echo "make demo        synthetic data -> trained models -> submissions/submission.csv"
	@echo "make train       DATA=... PROFILE=... RUN=...   data check, classifier, segmenter, thresholds + joint rule"
	@echo "make submit      DATA=... PROFILE=... RUN=...   ... then predict the test set, write submissions/submission.csv"
	@echo "make evaluate    DATA=... PROFILE=... RUN=...   ... then validation scores and runs/RUN/report.md"
	@echo "make attack      DATA=... PROFILE=... RUN=...   ... then adversarial examples, runs/RUN/attack/attack.md"
	@echo "make status      DATA=... PROFILE=... RUN=...   which stages are current, stale or not run, and why"
	@echo "make test        the test suite (creates $(VENV) if needed); make test-large: the large backbones' round trips"
	@echo "make data-check | train-cls | train-seg | tune | refit | predict   run the stages up to that one"
	@echo "make test-kaggle-stack  the fast tests on Kaggle's Python, TensorFlow and Keras (kaggle/image.toml)"
	@echo "make kernel-check [TRAINED=runs/NAME] [NOTES=DIR] [EXPERIMENTS=\"runs/a runs/b\"]  build the bundle, execute its notebook in a Jupyter kernel on a simulated /kaggle tree (kaggle/check/kernel.html)"
	@echo "make kaggle-data [DATA=DIR] [COMPETITION=...]  download this year's competition data into DIR (default $(KAGGLE_DATA)), checked"
	@echo "make kaggle-train KAGGLE_USER=... [PROFILE=kaggle]  a training kernel on Kaggle: stages up to refit, the run as its output"
	@echo "make kaggle-push KAGGLE_USER=... [TRAINED=runs/NAME | FROM_KERNEL=OWNER/SLUG] [NOTES=DIR] [EXPERIMENTS=...]  build and upload the bundle, push the notebook"
	@echo "make kaggle-status [KERNEL=OWNER/SLUG] / kaggle-output  wait for a kernel's run / fetch and validate its submission"
	@echo "make kaggle-submit                 submit that output to the competition and print its public score"
	@echo "make lint        ruff"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,hub,$(TF_EXTRA)]"
	$(BIN)/python -m pip install --quiet --no-deps "keras-hub==$$($(BIN)/python -c 'from voc_pipeline.backbone_table import KERAS_HUB_VERSION; print(KERAS_HUB_VERSION)')"
	touch $@

install: $(BIN)/.installed

test: install
	$(TEST_THREADS) $(BIN)/python -m pytest $(PARALLEL_TESTS) -m "not large"

test-large: install
	$(BIN)/python -m pytest -m large

test-fast: install
	$(TEST_THREADS) $(BIN)/python -m pytest $(PARALLEL_TESTS) -m "not slow and not large"

lint: install
	$(BIN)/ruff check voc_pipeline tests kaggle

$(DEMO_DATA)/train/train_set.csv: | install
	$(CLI) data demo $(DEMO_DATA) --n-train 160 --n-test 40 --force

demo-data: $(DEMO_DATA)/train/train_set.csv

demo: demo-data
	$(CLI) run --until evaluate $(DEMO_ARGS)
	$(CLI) score $(DEMO_DATA)/solution.csv submissions/submission.csv

data-check: install
	$(CLI) run --until data $(STAGE_ARGS)

train: install
	$(CLI) run --until tune $(STAGE_ARGS)

$(STAGE_TARGETS): install
	$(CLI) run --until $@ $(STAGE_ARGS)

status: install
	$(CLI) status $(STAGE_ARGS)

KAGGLE_USER ?= local-check
BUNDLE ?= kaggle/bundle
QUICK := --set classifier.head_epochs=1 --set classifier.finetune_epochs=1 --set segmenter.head_epochs=1 \
	--set segmenter.finetune_epochs=1 --set attack.num_images=4 --set attack.pgd_steps=3
# The student's notes (a folder of introduction.md, classification.md, ...) and runs made elsewhere to show in the
# notebook: make kaggle-push NOTES=notes EXPERIMENTS="runs/a runs/b".
NOTES ?=
EXPERIMENTS ?=
# The notebook handed in predicts from models trained before it: TRAINED=runs/NAME (a run folder that reached
# refit, uploaded as a second dataset) or FROM_KERNEL=OWNER/voc-pipeline-train (a training kernel's output,
# `make kaggle-train`). Without either, the notebook trains on Kaggle as it runs.
TRAINED ?=
FROM_KERNEL ?=
CHECK ?= kaggle/check
NOTEBOOK_ARGS = $(if $(NOTES),--notes $(NOTES)) $(if $(EXPERIMENTS),--experiments $(EXPERIMENTS)) \
	$(if $(TRAINED),--trained $(TRAINED)) $(if $(FROM_KERNEL),--from-kernel $(FROM_KERNEL))
# The training kernel's bundle, and its profile: PROFILE when given on the command line, else kaggle.
TRAIN_BUNDLE ?= kaggle/train-bundle
TRAIN_PROFILE = $(if $(filter-out file,$(origin PROFILE)),$(PROFILE),kaggle)
# Another kernel than the bundle's to follow: make kaggle-status KERNEL=OWNER/voc-pipeline-train.
KERNEL ?=

KAGGLE_VENV := .venv-kaggle
COMPETITION ?=
KAGGLE_DATA ?= data/kaggle
# A DATA given on the command line (or in the environment), not its data/demo default, is where the competition's
# data goes: `make kaggle-data DATA=dir` then `make train DATA=dir` reads what was downloaded.
KAGGLE_DATA_DIR = $(if $(filter-out file,$(origin DATA)),$(DATA),$(KAGGLE_DATA))
COMPETITION_ARG = $(if $(COMPETITION),--competition $(COMPETITION))
# The local check mounts the demo data under this name; it never reaches Kaggle.
LOCAL_COMPETITION := kul-computer-vision-ga-2-local-check

kernel-build: install
	$(CLI) kernel build --output $(BUNDLE) --username $(KAGGLE_USER) $(COMPETITION_ARG) $(NOTEBOOK_ARGS)

# Executes the notebook in a Jupyter kernel (papermill) on Kaggle's stack; keeps it and its HTML in $(CHECK).
# With TRAINED=runs/NAME it predicts from that run, on the data it was trained on (DATA, the demo data by default).
kernel-check: install demo-data
	$(CLI) kernel build --output $(BUNDLE) --username $(KAGGLE_USER) --competition $(or $(COMPETITION),$(LOCAL_COMPETITION)) $(NOTEBOOK_ARGS)
	$(CLI) kernel check --bundle $(BUNDLE) --data $(DATA) --output $(CHECK) $(if $(TRAINED)$(FROM_KERNEL),,$(QUICK))

test-kaggle-stack: install
	$(CLI) kernel stack --output $(KAGGLE_VENV)
	$(KAGGLE_VENV)/bin/python -m pytest $(PARALLEL_TESTS) -m "not slow"

$(BIN)/kaggle: | install
	$(BIN)/python -m pip install --quiet -e ".[kaggle]"

kaggle-data: $(BIN)/kaggle
	$(CLI) data download $(KAGGLE_DATA_DIR) $(COMPETITION_ARG)

# The credentials are checked first: without usable ones the client prints only its help, after the build.
kaggle-push: $(BIN)/kaggle
	@test "$(KAGGLE_USER)" != local-check || { echo "make kaggle-push needs KAGGLE_USER=<your Kaggle user name>"; exit 2; }
	$(CLI) kernel credentials
	$(CLI) kernel build --output $(BUNDLE) --username $(KAGGLE_USER) $(COMPETITION_ARG) $(NOTEBOOK_ARGS)
	$(CLI) kernel push --bundle $(BUNDLE) $(COMPETITION_ARG)

kaggle-status: $(BIN)/kaggle
	$(CLI) kernel status --bundle $(BUNDLE) $(if $(KERNEL),--kernel $(KERNEL),$(COMPETITION_ARG))

# Train on Kaggle without handing in: the training kernel (GPU, internet on, the competition attached) runs the
# stages up to refit and leaves the run as its output; then `make kaggle-push FROM_KERNEL=$(KAGGLE_USER)/voc-pipeline-train`.
kaggle-train: $(BIN)/kaggle
	@test "$(KAGGLE_USER)" != local-check || { echo "make kaggle-train needs KAGGLE_USER=<your Kaggle user name>"; exit 2; }
	$(CLI) kernel credentials
	$(CLI) kernel build --training --output $(TRAIN_BUNDLE) --username $(KAGGLE_USER) --profile $(TRAIN_PROFILE) \
		$(foreach assignment,$(SET),--set $(assignment)) $(COMPETITION_ARG)
	$(CLI) kernel push --bundle $(TRAIN_BUNDLE) $(COMPETITION_ARG)

# The submission is checked against the downloaded test images (in DATA when given, else KAGGLE_DATA) when
# kaggle-data has run.
kaggle-output: $(BIN)/kaggle
	$(CLI) kernel output --bundle $(BUNDLE) $(COMPETITION_ARG) $(if $(wildcard $(KAGGLE_DATA_DIR)/test/test_set.csv),--data $(KAGGLE_DATA_DIR))

kaggle-submit: $(BIN)/kaggle
	$(CLI) kernel submit --bundle $(BUNDLE) $(COMPETITION_ARG)

bench-submission: install
	$(CLI) bench submission

bench-classifier: install
	$(CLI) bench classifier --profile $(PROFILE)

bench-segmenter: install
	$(CLI) bench segmenter --profile $(PROFILE)

bench-predict: install
	$(CLI) bench predict --profile $(PROFILE)

bench-determinism: install
	$(CLI) bench determinism --profile $(PROFILE) --repeats 2

clean:
	rm -rf runs $(DEMO_DATA)
