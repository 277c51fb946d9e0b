# %% [markdown]
# # voc-pipeline on Kaggle: multi-label classification + segmentation of PASCAL VOC
#
# This notebook is generated from `kaggle/kernel.py` of the voc-pipeline repository and runs the same
# command-line stages a user runs locally (`make train`, `make submit`): nothing here is notebook-only code.
#
# **Design in brief**
# - *Classifier*: MobileNetV2 (ImageNet weights) with global average pooling, dropout and 20 **sigmoid**
#   outputs (multi-label: never a softmax), trained in two phases: the head on a frozen backbone, then the
#   top of the backbone with warm-up and cosine decay while batch norm stays frozen (small batches would
#   otherwise ruin its ImageNet statistics). The kaggle profile trains one model per fold (iterative
#   stratification) and averages them, with flip test-time augmentation.
# - *Thresholds*: the score of a classification row is the per-image F1 of its 20 flags, so one threshold
#   per class is tuned by coordinate ascent on the **mean per-image F1** of out-of-fold probabilities,
#   every image keeps at least its most probable class (an empty row scores 0), and per-class thresholds
#   are used only if they beat one global threshold in cross-validation.
# - *Segmenter*: DeepLabV3+ on MobileNet (ASPP with atrous rates 6/12/18 at output stride 16, a decoder
#   fusing stride-4 features), letterboxed inputs so training crops and prediction share one geometry,
#   a loss that ignores padding, flip TTA, and probabilities resized back to each image's own size before
#   the argmax.
# - *Joint decision*: a class the segmenter paints over enough of the image joins the flags, and pixels of
#   rejected classes can be cleared; which of these rules to use is chosen on validation by the score.
# - *Output hygiene*: everything but `submission.csv`, the run folder and its report is pruned so the
#   500-file limit of `/kaggle/working` never bites.
# - *Machine*: two T4 GPUs (Kaggle's GPU offer since the P100 was retired), internet on so that Keras can
#   download the ImageNet weights, unless the bundle was built with an attached weights dataset instead.

# %%
import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

parser = argparse.ArgumentParser(description="voc-pipeline Kaggle kernel")
parser.add_argument("--kaggle-root", default="/kaggle", help="root of the Kaggle folders (a simulated tree in checks)")
parser.add_argument("--profile", default="kaggle", help="configuration profile of the run")
parser.add_argument("--set", dest="assignments", action="append", default=[], help="extra configuration overrides")
# Jupyter passes its own arguments to a notebook; ignore what is not ours.
arguments, _ = parser.parse_known_args()
KAGGLE = Path(arguments.kaggle_root)
INPUT, WORKING = KAGGLE / "input", KAGGLE / "working"
RUN = "kaggle"
RUNS_DIR = WORKING / "runs"

# %% [markdown]
# ## Install the package from the attached wheel dataset
# Only the wheels of the dataset that holds the voc_pipeline wheel are installed, never other wheels
# that happen to lie under `/kaggle/input`.

# %%
package_wheels = sorted(INPUT.rglob("voc_pipeline-*.whl"))
if not package_wheels:
    raise SystemExit(f"no voc_pipeline wheel under {INPUT}: attach the dataset made by `voc-pipeline kernel build`")
wheel_folder = package_wheels[-1].parent
wheels = sorted(str(path) for path in wheel_folder.glob("*.whl"))
print(f"installing from {wheel_folder}: {', '.join(Path(wheel).name for wheel in wheels)}")
subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", *wheels], check=True)

# %% [markdown]
# ## ImageNet weights
# Weight files attached as a dataset (`voc-pipeline kernel weights`) are copied into Keras's home, where
# `keras.applications` looks before downloading. Then every file the profile's backbones need must be
# there, or the internet must be on so that Keras downloads it: otherwise the run stops here, saying so,
# rather than training from random weights.

# %%
from voc_pipeline.kernel.weights import install_attached_weights  # noqa: E402 (installed by the cell above)

overrides = list(arguments.assignments)
configuration = ["--profile", arguments.profile, *(item for assignment in overrides for item in ("--set", assignment))]
installed = install_attached_weights(INPUT)
print(f"attached weight files copied into Keras's home: {', '.join(path.name for path in installed) or 'none'}")


def internet_available() -> bool:
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=5).close()
        return True
    except OSError:
        return False


# The plan builds backbones on the CPU in a child process, so this notebook's process never holds the GPU.
verify = subprocess.run([sys.executable, "-m", "voc_pipeline", "kernel", "weights", "--verify", *configuration],
                        capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
print(verify.stdout.strip())
if verify.returncode:
    if not internet_available():
        raise SystemExit(f"{verify.stderr.strip()}\nThis kernel has no internet: attach the weights dataset made by "
                         "`voc-pipeline kernel weights` (kernel build --weights-dataset OWNER/NAME), or turn internet on.")
    print("internet is on: Keras downloads the missing weight files when training starts")

# %% [markdown]
# ## Run the stages: data check, classifier, segmenter, thresholds and joint rule, prediction, submission, evaluation
# `voc-pipeline run --until evaluate` walks the package's stage graph in order, exactly as `make` does locally.

# %%
stage_arguments = [*configuration, "--runs-dir", str(RUNS_DIR), "--run", RUN,
                   "--set", f'submit.output_dir="{WORKING}"', "--set", "submit.prune_output=true"]
# The package finds the folder holding train/train_set.csv under /kaggle/input (either mount style).
from voc_pipeline.data.competition import find_data_root  # noqa: E402

stage_arguments += ["--data", str(find_data_root(None, kaggle_input=INPUT))]
subprocess.run([sys.executable, "-m", "voc_pipeline", "run", "--until", "evaluate", *stage_arguments], check=True)

# %% [markdown]
# ## Results on the validation split
# The report compares the competition score with the trivial answer (most frequent class, centre box),
# independent heads and the joint rule; then per-class tables and the figures.

# %%
report = RUNS_DIR / RUN / "report.md"
print(report.read_text())
try:
    from IPython.display import Image, Markdown, display

    display(Markdown(report.read_text()))
    for figure in sorted((RUNS_DIR / RUN).glob("*.png")):
        display(Image(filename=str(figure)))
except ImportError:
    pass

# %% [markdown]
# ## The submission
# `submission.csv` in `/kaggle/working`, validated against the test arrays; fewer than 500 files remain.

# %%
files = [path for path in WORKING.rglob("*") if path.is_file()]
print(f"{WORKING / 'submission.csv'} written; {len(files)} files in {WORKING}")
assert (WORKING / "submission.csv").exists() and len(files) < 500
