# %% [markdown]
# # PASCAL VOC: multi-label classification, semantic segmentation and an adversarial attack
#
# This notebook is the report of one run of the voc-pipeline package, generated from its
# `kaggle/kernel.py`. Each code cell calls the same command line a user runs locally (`voc-pipeline run`,
# `voc-pipeline bench`), and every statement below about what the run did (its backbones, sizes, losses,
# epochs, what was chosen on validation and what it beat, the attack's budgets and success rates) is
# rendered from the files the run wrote, while this notebook ran. The parts follow the assignment: the data;
# part 1, multi-label classification; part 2, semantic segmentation and how both heads decide together;
# part 3, an adversarial attack on this run's own models; part 4, findings; then the submission.

# %% [markdown] tags=["notes:introduction"]

# %% tags=["parameters"]
# What a local check changes (papermill's parameters); Kaggle's own run uses these defaults.
kaggle_root = "/kaggle"
profile = "kaggle"
assignments = []

# %% [markdown]
# ## Setup: the package and the ImageNet weights
# The package is installed from the wheels of the dataset that holds the voc_pipeline wheel (never other
# wheels under `/kaggle/input`). Weight files attached as a dataset (`voc-pipeline kernel weights`) are
# copied into Keras's home; then every file the profile's backbones need must be there, or the internet
# must be on so that Keras downloads it: otherwise the run stops here, saying so, rather than training from
# random weights.

# %%
import os
import subprocess
import sys
import warnings
from pathlib import Path

# tqdm's notebook bars need ipywidgets; the package's plain bars are fine here.
warnings.filterwarnings("ignore", message="IProgress not found")
KAGGLE = Path(kaggle_root)
INPUT, WORKING = KAGGLE / "input", KAGGLE / "working"
RUNS_DIR, RUN = WORKING / "runs", "kaggle"
RUN_DIR = RUNS_DIR / RUN
# A notebook predicting from a trained run replaces this with the run's own configuration (below).
configuration = ["--profile", profile, *(word for assignment in assignments for word in ("--set", assignment))]
no_training = []

package_wheels = sorted(INPUT.rglob("voc_pipeline-*.whl"))
if not package_wheels:
    raise RuntimeError(f"no voc_pipeline wheel under {INPUT}: attach the dataset made by `voc-pipeline kernel build`")
WHEEL_FOLDER = package_wheels[-1].parent
wheels = sorted(str(path) for path in WHEEL_FOLDER.glob("*.whl"))
print(f"installing from {WHEEL_FOLDER}: {', '.join(Path(wheel).name for wheel in wheels)}")
installation = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", *wheels],
                              check=True)

# %%
from voc_pipeline import report_parts  # installed by the cell above
from voc_pipeline.data.competition import find_data_root
from voc_pipeline.kernel.notebook import internet_available, show, voc_pipeline_cli

# The package finds the folder holding train/train_set.csv under /kaggle/input (either mount style).
DATA_ROOT = find_data_root(None, kaggle_input=INPUT)

# %% tags=["only:full", "only:training"]
from voc_pipeline.kernel.weights import install_attached_weights

installed = install_attached_weights(INPUT)
print(f"attached weight files copied into Keras's home: {', '.join(path.name for path in installed) or 'none'}")
# The plan builds backbones on the CPU in a child process, so this notebook's process never holds the GPU.
verify = subprocess.run([sys.executable, "-m", "voc_pipeline", "kernel", "weights", "--verify", *configuration],
                        capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
print(verify.stdout.strip() or "this profile needs no ImageNet weights")
if verify.returncode:
    if not internet_available():
        raise RuntimeError(f"{verify.stderr.strip()}\nThis kernel has no internet: attach the weights dataset made by "
                           "`voc-pipeline kernel weights` (kernel build --weights-dataset OWNER/NAME), or turn internet on.")
    print("internet is on: Keras downloads the missing weight files when training starts")

# %% [markdown] tags=["only:trained"]
# The models were trained before this notebook, and travel with it: the run's files come from an attached
# dataset (`voc-pipeline kernel build --trained`) or from a training kernel's output (`make kaggle-train`).
# They are put into this notebook's run folder, each file checked against the run's manifest, and the
# attached competition data must be the data the run was trained on (its fingerprint), or the notebook
# stops here. The run's own configuration then rules every stage below; nothing trains.

# %% tags=["only:trained"]
from voc_pipeline.kernel.trained_run import find_carried_run, read_manifest

carried = find_carried_run(INPUT)
RUN = read_manifest(carried)["run"]
RUN_DIR = RUNS_DIR / RUN
voc_pipeline_cli("kernel", "install-run", str(carried), "--runs-dir", str(RUNS_DIR), "--data", str(DATA_ROOT))
configuration, no_training = ["--profile", str(RUN_DIR / "config.toml")], ["--no-training"]

# %%
stage_arguments = [*configuration, "--runs-dir", str(RUNS_DIR), "--run", RUN, "--data", str(DATA_ROOT),
                   "--set", f'submit.output_dir="{WORKING}"', "--set", "submit.prune_output=true"]

# %% [markdown] tags=["only:full", "only:trained"]
# ## The data
# The data stage loads every array, checks its shape and values against the CSV, and writes stratified
# splits; the figures below are its summary.

# %% tags=["only:full"]
voc_pipeline_cli("run", "--until", "data", *stage_arguments)

# %% tags=["only:full", "only:trained"]
show(report_parts.data_part(RUN_DIR))

# %% [markdown] tags=["notes:data"]

# %% [markdown] tags=["only:full"]
# ## Training both heads, and the time it takes
# First the estimated time of the whole run for this profile (`voc-pipeline bench estimate`: counted FLOPs
# and assumed GPU throughput, the attack included), then every stage up to the evaluation: the classifier,
# the segmenter, the thresholds and the joint rule (`tune`), the test predictions, the submission and the
# validation report, walked in order by the package's stage graph as `make` does locally.

# %% tags=["only:full"]
voc_pipeline_cli("bench", "estimate", *configuration)
voc_pipeline_cli("run", "--until", "evaluate", *stage_arguments)

# %% [markdown] tags=["only:trained"]
# ## Training (before this notebook)
# Where, when and how the models were trained, as the run recorded it, with the learning curves of its
# trainings.

# %% tags=["only:trained"]
show(report_parts.training_part(RUN_DIR))

# %% [markdown] tags=["only:trained"]
# ## Predictions, and the time they take
# The estimated time of what this notebook runs (`voc-pipeline bench estimate --predict-only`: the
# predictions, the evaluation and the attack; no training), then the stage graph up to the evaluation with
# `--no-training`: the carried stages must be current by the same content keys as anywhere, and only the
# test predictions, the submission and the validation report run.

# %% tags=["only:trained"]
voc_pipeline_cli("bench", "estimate", "--predict-only", *configuration)
voc_pipeline_cli("run", "--until", "evaluate", *no_training, *stage_arguments)

# %% [markdown] tags=["only:training"]
# ## Training up to the refit
# The estimated time of the training (`voc-pipeline bench estimate`), then every stage up to `refit`:
# the classifier, the segmenter, the thresholds and the joint rule, and the final models. The run is then
# packed into this kernel's output (`voc-pipeline kernel pack-run`), where the notebook handed in finds
# it (`make kaggle-push FROM_KERNEL=...`), and the working folder keeps nothing else.

# %% tags=["only:training"]
import shutil

voc_pipeline_cli("bench", "estimate", *configuration)
voc_pipeline_cli("run", "--until", "refit", *stage_arguments)
voc_pipeline_cli("kernel", "pack-run", str(RUN_DIR), "--output", str(WORKING / "trained-run"))
for curves in sorted(RUN_DIR.glob("*_curves*.png")):
    show([report_parts.Figure(curves, curves.stem.replace("_", " "))])
shutil.rmtree(RUNS_DIR)

# %% [markdown] tags=["only:full", "only:trained"]
# ## Part 1: multi-label classification
# Twenty independent yes/no questions per image, answered by one network and turned into flags by
# thresholds tuned for the competition's score.

# %% tags=["only:full", "only:trained"]
show(report_parts.classification_part(RUN_DIR))

# %% [markdown] tags=["notes:classification"]

# %% [markdown] tags=["only:full", "only:trained"]
# ## Part 2: semantic segmentation, and how both heads decide together
# A label for every pixel; then the rule that reconciles the classifier's flags with the segmenter's masks.

# %% tags=["only:full", "only:trained"]
show(report_parts.segmentation_part(RUN_DIR))

# %% [markdown] tags=["only:full", "only:trained"]
# ### How both heads decide together

# %% tags=["only:full", "only:trained"]
show(report_parts.joint_part(RUN_DIR))

# %% [markdown] tags=["notes:segmentation"]

# %% [markdown] tags=["only:full", "only:trained"]
# ## Part 3: an adversarial attack on this run's own models
# The `attack` stage perturbs validation images within an L-infinity budget in raw pixel space (before the
# models' own preprocessing), against the classifier and the segmenter trained above, with and without a
# defence.

# %% tags=["only:full", "only:trained"]
voc_pipeline_cli("run", "--until", "attack", *no_training, *stage_arguments)
show(report_parts.attack_part(RUN_DIR))

# %% [markdown] tags=["notes:adversarial"]

# %% [markdown] tags=["experiments"]
# ## Experiments run before this notebook
# Runs made elsewhere with the same package (other backbones, losses, sizes, threshold strategies), bundled
# with the notebook's dataset by `voc-pipeline kernel build --experiments` and compared by
# `voc-pipeline compare`: what differs in each one's configuration from the first, and what it scored on its
# own validation split.

# %% tags=["experiments"]
show(report_parts.experiments_part(WHEEL_FOLDER / "experiments"))

# %% [markdown] tags=["only:full", "only:trained"]
# ## Part 4: findings
# What each choice of this run gained over its alternative, from the figures measured above.

# %% tags=["only:full", "only:trained"]
show(report_parts.findings_part(RUN_DIR))

# %% [markdown] tags=["notes:discussion"]

# %% [markdown] tags=["only:full", "only:trained"]
# ## The submission
# `submission.csv` in `/kaggle/working`, validated against the test arrays by the `submit` stage; the
# working folder is pruned under Kaggle's 500-file limit.

# %% tags=["only:full", "only:trained"]
show(report_parts.submission_part(RUN_DIR, WORKING))
