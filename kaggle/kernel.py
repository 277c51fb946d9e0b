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

# %%
import argparse
import glob
import shutil
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
# ## Install the package from the attached wheel dataset (no internet needed)

# %%
wheels = sorted(glob.glob(str(INPUT / "**" / "*.whl"), recursive=True))
if not any(Path(wheel).name.startswith("voc_pipeline-") for wheel in wheels):
    raise SystemExit(f"no voc_pipeline wheel under {INPUT}: attach the dataset made by `voc-pipeline kernel build`")
subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", *wheels], check=True)

# %% [markdown]
# ## ImageNet weights
# Attached weight files (a dataset holding Keras's `*_no_top.h5` files) are copied where Keras looks for
# them; without them and without internet the run falls back to random initialisation, loudly.

# %%
KERAS_MODELS = Path.home() / ".keras" / "models"
attached = [Path(path) for path in glob.glob(str(INPUT / "**" / "*no_top*.h5"), recursive=True)]
for path in attached:
    KERAS_MODELS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, KERAS_MODELS / path.name)


def internet_available() -> bool:
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


overrides = list(arguments.assignments)
if attached:
    print(f"using {len(attached)} attached weight files: {', '.join(path.name for path in attached)}")
elif not internet_available():
    print("WARNING: no attached ImageNet weights and no internet: training from random initialisation "
          "(attach the Keras no-top weight files as a dataset for a much better score)")
    overrides += ["classifier.weights=none", "segmenter.weights=none"]

# %% [markdown]
# ## Run the stages: data check, classifier, segmenter, thresholds and joint rule, prediction, submission, evaluation
# `voc-pipeline run --until evaluate` walks the package's stage graph in order, exactly as `make` does locally.

# %%
stage_arguments = ["--profile", arguments.profile, "--runs-dir", str(RUNS_DIR), "--run", RUN,
                   "--set", f'submit.output_dir="{WORKING}"', "--set", "submit.prune_output=true"]
stage_arguments += [item for assignment in overrides for item in ("--set", assignment)]
# The package finds the folder holding train/train_set.csv under /kaggle/input (either mount style).
from voc_pipeline.data.competition import find_data_root  # noqa: E402 (installed by the cell above)

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
