"""Every file of a run folder: its name, the stage that writes it, and its reader.

Stages hand their work to one another only through these files. A reader turns a missing, cut or
corrupt file into an ArtifactError that names the file, what is wrong and the stage that rewrites it,
so a stage never needs to import the stage that made its inputs. Keras is imported only by the model
readers, so reading a JSON artifact never loads TensorFlow.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voc_pipeline.core.classes import CLASS_NAMES
from voc_pipeline.core.fusion import FusionModel
from voc_pipeline.core.joint import InferencePlan, JointRule
from voc_pipeline.data.splits import Splits, load_splits
from voc_pipeline.errors import ArtifactError
from voc_pipeline.files import hash_file, json_kind, load_label_maps, read_text_file


@dataclass(frozen=True)
class Artifact:
    """One kind of run-folder file.

    Attributes:
        pattern: its path relative to the run folder; a `*` stands for a part that varies (fold tags).
        stage: the stage that writes it.
        description: what it holds, for the README and `voc-pipeline status`.
    """

    pattern: str
    stage: str
    description: str

    def path(self, run_dir: Path) -> Path:
        """The file's path (for artifacts of exactly one file)."""
        if "*" in self.pattern:
            raise ValueError(f"artifact {self.pattern} stands for several files; use files()")
        return Path(run_dir) / self.pattern

    def files(self, run_dir: Path) -> list[Path]:
        """The files of this artifact that exist in `run_dir`, sorted."""
        return sorted(path for path in Path(run_dir).glob(self.pattern) if path.is_file())

    def require(self, run_dir: Path) -> Path:
        """The file's path, or an ArtifactError naming the stage that writes it."""
        path = self.path(run_dir)
        if not path.is_file():
            raise ArtifactError(f"{path} is missing: stage {self.stage} writes it; {rerun_hint(self.stage)}")
        return path


def rerun_hint(stage: str) -> str:
    """How to (re)make a stage's files, for error messages."""
    return (f"run `voc-pipeline run --until {stage}` with this run's --run, --profile and --set "
            f"(it runs what is missing or stale, up to {stage})")


def unreadable(path: Path, stage: str, problem: str) -> ArtifactError:
    """The error for an artifact that exists but cannot be read (cut short by an interruption, edited)."""
    return ArtifactError(f"{path} is unreadable ({problem}); stage {stage} rewrites it: {rerun_hint(stage)} --force")


SPLITS = Artifact("splits.json", "data", "stratified holdout and K-fold image ids")
DATA_SUMMARY = Artifact("data_summary.json", "data", "sizes, classes, void pixels, CSV/mask disagreements")
CLASSIFIER_MANIFEST = Artifact("classifier.json", "train-cls", "the classifier's model files and settings")
CLASSIFIER_MODELS = Artifact("classifier*.keras", "train-cls", "trained classifier(s), one per fold with K-fold")
CLASSIFIER_VALIDATION = Artifact("classifier_validation.npz", "train-cls",
                                 "validation (or out-of-fold) probabilities, plain and with flip TTA")
CLASSIFIER_HISTORY = Artifact("classifier_history*.csv", "train-cls", "per-epoch training history")
CLASSIFIER_CURVES = Artifact("classifier_curves*.png", "train-cls", "learning curves")
CLASSIFIER_AUGMENTED = Artifact("classifier_augmented.png", "train-cls",
                                "training images as the classifier sees them, with copy-paste (when on)")
SEGMENTER_MANIFEST = Artifact("segmenter.json", "train-seg", "the segmenter's model file and settings")
SEGMENTER_MODEL = Artifact("segmenter.keras", "train-seg", "trained DeepLabV3+ segmenter")
SEGMENTER_HISTORY = Artifact("segmenter_history.csv", "train-seg", "per-epoch training history")
SEGMENTER_CURVES = Artifact("segmenter_curves.png", "train-seg", "learning curves")
SEGMENTER_AUGMENTED = Artifact("segmenter_augmented.png", "train-seg",
                               "training images and masks as the segmenter sees them, with copy-paste (when on)")
SEGMENTER_PER_CLASS = Artifact("segmenter_per_class.png", "train-seg", "validation IoU per class")
SEGMENTER_OVERLAYS = Artifact("segmenter_overlays.png", "train-seg", "validation images: truth and prediction")
THRESHOLDS = Artifact("thresholds.json", "tune", "the flags tune chose: strategy, a threshold per class, the "
                      "temperature, the fused-evidence model if kept")
THRESHOLD_COMPARISON = Artifact("threshold_comparison.md", "tune", "threshold strategies side by side")
CLASSIFIER_PER_CLASS = Artifact("classifier_per_class.png", "tune", "per-class AP and F1 before and after tuning")
RELIABILITY = Artifact("reliability.png", "tune", "predicted probability against observed frequency, both heads, "
                       "before and after calibration")
JOINT_RULE = Artifact("joint_rule.json", "tune", "the rule reconciling the two heads, with every candidate's score")
VALIDATION_PREDICTIONS = Artifact("validation_predictions.npz", "tune",
                                  "the chosen rule on validation: row scores, pixel confusion, the worst images")
SELF_TRAINING = Artifact("self_training.json", "self-train",
                         "self-training: each round's pseudo-labels and thresholds, both models' validation score, "
                         "whether the self-trained models were kept")
SELF_TRAINED_MODELS = Artifact("self_trained_*.keras", "self-train", "classifier and segmenter trained on "
                               "fit + pseudo-labelled test images")
SELF_TRAINED_HISTORY = Artifact("self_trained_*_history.csv", "self-train", "per-epoch history of the last round")
SELF_TRAINED_CURVES = Artifact("self_trained_*_curves.png", "self-train", "learning curves of the last round")
PSEUDO_LABELS = Artifact("pseudo_labels.png", "self-train", "test images with the last round's pseudo-labels "
                         "(unsure pixels in VOC's cream void colour, ignored by the loss; confident background untinted)")
FINAL_MODELS = Artifact("final_models.json", "refit",
                        "the models that make the test predictions, what each was trained on, their hashes")
# Beside, not under, the first models' names: "classifier*.keras" must not match a refit model.
REFIT_MODELS = Artifact("refit_*.keras", "refit", "classifier and segmenter refit on fit + validation images")
REFIT_HISTORY = Artifact("refit_*_history.csv", "refit", "per-epoch history of each refit")
REFIT_CURVES = Artifact("refit_*_curves.png", "refit", "learning curves of each refit")
TEST_PREDICTIONS = Artifact("test_predictions.npz", "predict",
                            "test probabilities, flags and label maps at each test image's size")
SUBMISSION = Artifact("submission.csv", "submit", "the validated submission (also copied to submit.output_dir)")
REPORT = Artifact("report.md", "evaluate", "validation report linking the figures")
SCORE_COMPARISON = Artifact("score_comparison.png", "evaluate", "competition score against the baseline")
WORST_IMAGES = Artifact("worst_validation_images.png", "evaluate", "the worst validation images, both heads' outputs")
PIXEL_CONFUSION = Artifact("pixel_confusion.png", "evaluate", "pixel confusion heatmap of the chosen rule")
ATTACK_FILES = Artifact("attack/*", "attack", "adversarial attacks: attack.md, attack.csv and example panels")


# The attack's figures, shown by name (ATTACK_FILES covers them as the stage's outputs).
ATTACK_SUCCESS_PLOT = Artifact("attack/success_vs_epsilon.png", "attack", "success rate against the budget")
ATTACK_CLASSIFIER_EXAMPLES = Artifact("attack/classifier_examples.png", "attack", "classifier: adversarial examples")
ATTACK_SEGMENTER_EXAMPLES = Artifact("attack/segmenter_examples.png", "attack", "segmenter: clean and attacked masks")


def metrics(stage: str) -> Artifact:
    """The metrics a stage returned, as JSON (`metrics/<stage>.json`)."""
    return Artifact(f"metrics/{stage}.json", stage, "the stage's figures")


ARTIFACTS: tuple[Artifact, ...] = (
    SPLITS, DATA_SUMMARY, CLASSIFIER_MANIFEST, CLASSIFIER_MODELS, CLASSIFIER_VALIDATION, CLASSIFIER_HISTORY,
    CLASSIFIER_CURVES, CLASSIFIER_AUGMENTED, SEGMENTER_MANIFEST, SEGMENTER_MODEL, SEGMENTER_HISTORY, SEGMENTER_CURVES,
    SEGMENTER_AUGMENTED,
    SEGMENTER_PER_CLASS, SEGMENTER_OVERLAYS, THRESHOLDS, THRESHOLD_COMPARISON, CLASSIFIER_PER_CLASS, RELIABILITY, JOINT_RULE,
    VALIDATION_PREDICTIONS, SELF_TRAINING, SELF_TRAINED_MODELS, SELF_TRAINED_HISTORY, SELF_TRAINED_CURVES,
    PSEUDO_LABELS, FINAL_MODELS, REFIT_MODELS, REFIT_HISTORY, REFIT_CURVES, TEST_PREDICTIONS, SUBMISSION,
    REPORT, SCORE_COMPARISON, WORST_IMAGES, PIXEL_CONFUSION,
    ATTACK_FILES,
)


def written_by(stage: str) -> tuple[Artifact, ...]:
    """The artifacts a stage writes, its metrics included."""
    return (*(artifact for artifact in ARTIFACTS if artifact.stage == stage), metrics(stage))


# The bookkeeping of the run folder itself (see voc_pipeline.run_folder).
CONFIG_FILE = "config.toml"
RUN_INFO_FILE = "run_info.json"


# ---------------------------------------------------------------- model file names (one per fold tag)


def classifier_file(tag: str) -> str:
    return f"classifier{tag}.keras"


def classifier_history_file(tag: str) -> str:
    return f"classifier_history{tag}.csv"


def classifier_curves_file(tag: str) -> str:
    return f"classifier_curves{tag}.png"


CHECKPOINTS_DIR = "checkpoints"


def refit_model_file(head: str) -> str:
    """The refit model of `head` ("classifier" or "segmenter")."""
    return f"refit_{head}.keras"


def self_trained_model_file(head: str) -> str:
    """The self-trained model of `head` ("classifier" or "segmenter")."""
    return f"self_trained_{head}.keras"


def refit_history_file(head: str) -> str:
    return f"refit_{head}_history.csv"


def refit_curves_file(head: str) -> str:
    return f"refit_{head}_curves.png"


def refit_curves(head: str) -> Artifact:
    """The learning curves of `head`'s refit, as an artifact of its own."""
    return Artifact(refit_curves_file(head), "refit", f"learning curves of the {head}'s refit")


# ---------------------------------------------------------------- readers


def read_json(artifact: Artifact, run_dir: Path) -> dict:
    """A JSON artifact as a dict."""
    path = artifact.require(run_dir)
    try:
        payload = json.loads(read_text_file(path, "a JSON object", error_type=ArtifactError))
    except json.JSONDecodeError as error:
        raise unreadable(path, artifact.stage, f"not valid JSON: {error}") from None
    except ArtifactError as error:  # a folder, binary, not UTF-8: said in the file reader's words
        raise unreadable(path, artifact.stage, str(error).removeprefix(f"{path} ")) from None
    if not isinstance(payload, dict):
        raise unreadable(path, artifact.stage, f"it holds {json_kind(payload)}, expected a JSON object")
    return payload


def read_npz(artifact: Artifact, run_dir: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of an .npz artifact (never unpickled)."""
    path = artifact.require(run_dir)
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise unreadable(path, artifact.stage, f"not a complete .npz file: {error}") from None
    missing = [name for name in names if name not in arrays]
    if missing:
        raise unreadable(path, artifact.stage, f"it lacks the arrays {', '.join(missing)}")
    return arrays


def read_label_map_npz(artifact: Artifact, run_dir: Path) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """(arrays, label maps) of an .npz written by files.save_label_maps_atomic."""
    path = artifact.require(run_dir)
    try:
        return load_label_maps(path)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        raise unreadable(path, artifact.stage, f"not a complete .npz file of label maps: {error}") from None


def read_splits(run_dir: Path) -> Splits:
    """The run's splits (stage data)."""
    read_json(SPLITS, run_dir)  # turns a cut file into a clear error before it is parsed
    try:
        return load_splits(SPLITS.path(run_dir))
    except (KeyError, TypeError, ValueError) as error:
        raise unreadable(SPLITS.path(run_dir), SPLITS.stage, f"no valid field {error}") from None


def read_thresholds(run_dir: Path, key: str = "thresholds") -> np.ndarray:
    """Per-class thresholds in class order from stage tune: those of the chosen flag source ("thresholds"), or
    those of the classifier alone ("classifier_thresholds")."""
    payload = read_json(THRESHOLDS, run_dir)
    try:
        return np.array([float(payload[key][name]) for name in CLASS_NAMES])
    except (KeyError, TypeError, ValueError) as error:
        raise unreadable(THRESHOLDS.path(run_dir), THRESHOLDS.stage, f"no threshold for {error}") from None


def read_joint_rule(run_dir: Path) -> tuple[JointRule, dict]:
    """(the chosen joint rule, the whole joint_rule.json payload) from stage tune."""
    payload = read_json(JOINT_RULE, run_dir)
    try:
        return JointRule.from_dict(payload["rule"]), payload
    except (KeyError, TypeError) as error:
        raise unreadable(JOINT_RULE.path(run_dir), JOINT_RULE.stage, f"no rule field {error}") from None


def read_inference_plan(run_dir: Path) -> tuple[InferencePlan, dict]:
    """(everything tune chose, as one plan; its thresholds.json payload) from stage tune."""
    thresholds = read_thresholds(run_dir)
    payload = read_json(THRESHOLDS, run_dir)
    rule, joint = read_joint_rule(run_dir)
    try:
        fusion = FusionModel.from_dict(payload["fusion"]) if payload.get("fusion") else None
        # Runs tuned before calibration existed hold no strategy name the plan knows, nor temperatures: thresholds, 1.0.
        strategy = payload.get("strategy") if payload.get("strategy") == "expected-f1" else "global"
        plan = InferencePlan(thresholds, fusion, rule, tuple(float(scale) for scale in joint["scales"]),
                             np.array(joint["class_boxes"], dtype=np.float64), float(joint["tiny_mask_fraction"]),
                             strategy, float(payload.get("temperature", 1.0)),
                             float(joint.get("segmenter_temperature", 1.0)),
                             payload.get("source", "fused" if fusion else "classifier"))
    except (KeyError, TypeError, ValueError) as error:
        raise unreadable(JOINT_RULE.path(run_dir), JOINT_RULE.stage, f"no field {error}") from None
    return plan, payload


@dataclass(frozen=True)
class ClassifierValidation:
    """The classifier's probabilities on its validation images (out-of-fold with K-fold)."""

    ids: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    probabilities_flip_tta: np.ndarray


def read_self_training(run_dir: Path) -> dict:
    """Stage self-train's manifest; {} for a run made before the stage existed (self-training was off)."""
    return read_json(SELF_TRAINING, run_dir) if SELF_TRAINING.path(run_dir).is_file() else {}


def read_classifier_validation(run_dir: Path) -> ClassifierValidation:
    arrays = read_npz(CLASSIFIER_VALIDATION, run_dir, ("ids", "labels", "probabilities", "probabilities_flip_tta"))
    return ClassifierValidation(arrays["ids"], arrays["labels"], arrays["probabilities"], arrays["probabilities_flip_tta"])


def read_validation_predictions(run_dir: Path) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """(all_ids, row scores, confusion, and for the worst images ids, probabilities, flags; their label maps)
    from stage tune."""
    return read_label_map_npz(VALIDATION_PREDICTIONS, run_dir)


def read_test_predictions(run_dir: Path) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """(ids, classifier probabilities, source probabilities, flags; label maps at each test image's size) from stage predict."""
    return read_label_map_npz(TEST_PREDICTIONS, run_dir)


def read_config(run_dir: Path) -> dict:
    """The run's resolved configuration (config.toml, written before any stage works), as nested dicts."""
    from voc_pipeline.config import load_profile
    from voc_pipeline.errors import ConfigError

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: every stage writes it before it works; {rerun_hint('data')}")
    try:
        return load_profile(str(path))
    except ConfigError as error:
        raise ArtifactError(f"{error}; any stage rewrites it: {rerun_hint('data')}") from None


def read_training_facts(artifact: Artifact, run_dir: Path) -> dict:
    """What a head's training started from and what each phase trained, from its manifest (`heads.training_facts`)."""
    facts = read_json(artifact, run_dir).get("training")
    if not isinstance(facts, dict) or not isinstance(facts.get("phases"), list):
        raise unreadable(artifact.path(run_dir), artifact.stage, "it holds no record of what its training did "
                         "(written by an earlier version of the package)")
    return facts


def read_metrics(run_dir: Path, stage: str) -> dict:
    """The figures a stage returned when it last finished."""
    return read_json(metrics(stage), run_dir)


# The member of a .keras file recording which options sit at the saving Keras's defaults (voc_pipeline.models.portable).
OPTION_DEFAULTS_MEMBER = "voc_pipeline_option_defaults.json"


def load_model_file(path: Path, stage: str):
    """A saved Keras model (safe mode, uncompiled); a cut or corrupt file becomes an ArtifactError.

    A model saved by a newer Keras may name options this Keras does not know (Keras 3.15's initializers carry
    `input_axes`, its BatchNormalization `renorm`, which 3.13 refuses). Such an option is dropped when the file's
    own record (`models.portable`) says it sat at the saving Keras's default, so that dropping it changes
    nothing; otherwise the load is refused, naming the option and both Keras versions.
    """
    import keras

    # The package's own layers must be registered before a model that uses them is deserialized.
    import voc_pipeline.models.backbones  # noqa: F401
    import voc_pipeline.models.segmenter  # noqa: F401

    if not path.is_file():
        raise ArtifactError(f"{path} is missing: stage {stage} writes it; {rerun_hint(stage)}")
    dropped: dict[str, set[str]] = {}
    source = path
    with tempfile.TemporaryDirectory(prefix="voc-pipeline-model-") as folder:
        while True:
            try:
                model = keras.saving.load_model(source, compile=False)
                break
            except (zipfile.BadZipFile, ValueError, OSError, KeyError) as error:
                raise unreadable(path, stage, f"not a complete Keras model file: {str(error)[:200]}") from None
            except TypeError as error:
                unknown = unknown_options(str(error))
                if not unknown or unknown[1] <= dropped.get(unknown[0], set()):
                    raise
                dropped.setdefault(unknown[0], set()).update(unknown[1])
                source = without_options(path, Path(folder) / f"{len(dropped)}.keras", dropped, keras.__version__)
    if dropped:
        logging.getLogger(__name__).debug("%s: saved by a newer Keras; dropped the options it records at their defaults "
                                         "that Keras %s does not know: %s", path.name, keras.__version__,
                                         ", ".join(f"{name}.{option}" for name, options in sorted(dropped.items())
                                                   for option in sorted(options)))
    return model


def unknown_options(message: str) -> tuple[str, set[str]] | None:
    """(class name, the options it does not take) as Keras says it while loading, else None. Keras says it either
    way: "GlorotUniform.__init__() got an unexpected keyword argument 'input_axes'", or "Unrecognized keyword
    arguments passed to BatchNormalization: {'renorm': False, ...}"."""
    match = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", message)
    if match:
        return match.group(1), {match.group(2)}
    match = re.search(r"Unrecognized keyword arguments passed to (\w+): \{([^}]*)\}", message)
    if match:
        return match.group(1), set(re.findall(r"'(\w+)':", match.group(2)))
    return None


def without_options(path: Path, target: Path, dropped: dict[str, set[str]], keras_version: str) -> Path:
    """A copy of the .keras file at `target` whose configuration lacks the `dropped` options (class name -> options).

    Raises:
        ArtifactError: the file does not record one of them at its default, so dropping it could change the model.
    """
    with zipfile.ZipFile(path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    record = json.loads(members.get(OPTION_DEFAULTS_MEMBER, b"{}"))
    saved_with = record.get("keras_version") or json.loads(members["metadata.json"]).get("keras_version", "a newer one")

    def strip(node):
        if isinstance(node, dict):
            config, name = node.get("config"), node.get("class_name")
            if isinstance(config, dict) and name in dropped:
                for option in dropped[name] & set(config):
                    defaults = record.get("defaults", {}).get(name, {})
                    if option not in defaults or json.dumps(defaults[option]) != json.dumps(config[option]):
                        raise ArtifactError(
                            f"{path} was saved by Keras {saved_with}, whose {name} option {option} = {config[option]!r} "
                            f"Keras {keras_version} does not know, and the file does not record it at its default; "
                            f"load it with Keras {saved_with}, or train it with Keras {keras_version}")
                    del config[option]
            for value in node.values():
                strip(value)
        elif isinstance(node, list):
            for value in node:
                strip(value)

    configuration = json.loads(members["config.json"])
    strip(configuration)
    members["config.json"] = json.dumps(configuration).encode()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as copy:
        for name, data in members.items():
            copy.writestr(name, data)
    return target


def load_classifiers(run_dir: Path) -> tuple[list, dict]:
    """The run's trained classifier(s) and their manifest."""
    manifest = read_json(CLASSIFIER_MANIFEST, run_dir)
    names = manifest.get("models")
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise unreadable(CLASSIFIER_MANIFEST.path(run_dir), CLASSIFIER_MANIFEST.stage, "no list of model files in 'models'")
    return [load_model_file(Path(run_dir) / name, CLASSIFIER_MANIFEST.stage) for name in names], manifest


def load_segmenter(run_dir: Path) -> tuple[object, dict]:
    """The run's trained segmenter and its manifest."""
    manifest = read_json(SEGMENTER_MANIFEST, run_dir)
    if not isinstance(manifest.get("model"), str):
        raise unreadable(SEGMENTER_MANIFEST.path(run_dir), SEGMENTER_MANIFEST.stage, "no model file name in 'model'")
    return load_model_file(Path(run_dir) / manifest["model"], SEGMENTER_MANIFEST.stage), manifest


def read_history(run_dir: Path, name: str, stage: str) -> list[dict]:
    """A training's per-epoch history CSV (`name` in the run folder) as one dict per epoch."""
    import pandas as pd

    path = Path(run_dir) / name
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: stage {stage} writes it; {rerun_hint(stage)}")
    try:
        history = pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise unreadable(path, stage, f"not a history CSV: {error}") from None
    if not {"epoch", "phase"} <= set(history.columns):
        raise unreadable(path, stage, "it has no epoch and phase columns")
    return history.to_dict("records")


ATTACK_NUMBERS = ("epsilon", "success_rate", "clean_score", "adversarial_score")


def read_attack_rows(run_dir: Path) -> list[dict]:
    """attack/attack.csv (stage attack) as one dict per row, its numbers as floats."""
    path = Path(run_dir) / "attack" / "attack.csv"
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: stage attack writes it; {rerun_hint('attack')}")
    try:
        rows = list(csv.DictReader(read_text_file(path, "the attack's table", error_type=ArtifactError).splitlines()))
        for row in rows:
            for key in ATTACK_NUMBERS:
                row[key] = float(row[key])
    except (KeyError, TypeError, ValueError) as error:
        raise unreadable(path, "attack", f"no number in column {error}") from None
    return rows


def load_final_models(run_dir: Path) -> tuple[list, object, dict]:
    """(the classifier(s), the segmenter, final_models.json) that make the test predictions, from stage refit.

    Each model file must still have the hash the refit recorded: a model replaced since would otherwise make
    predictions that the manifest and the report attribute to another."""
    manifest = read_json(FINAL_MODELS, run_dir)
    try:
        files = [(head, name, digest) for head in ("classifier", "segmenter")
                 for name, digest in zip(manifest[head]["models"], manifest[head]["sha256"], strict=True)]
    except (KeyError, TypeError, ValueError) as error:
        raise unreadable(FINAL_MODELS.path(run_dir), FINAL_MODELS.stage, f"no valid field {error}") from None
    if [head for head, _, _ in files].count("segmenter") != 1:
        raise unreadable(FINAL_MODELS.path(run_dir), FINAL_MODELS.stage, "it does not name exactly one segmenter")
    models = []
    for _, name, digest in files:
        path = Path(run_dir) / name
        model = load_model_file(path, FINAL_MODELS.stage)
        if hash_file(path) != digest:
            raise ArtifactError(f"{path} is not the model stage refit chose (its bytes changed since); "
                                f"{rerun_hint(FINAL_MODELS.stage)}")
        models.append(model)
    return models[:-1], models[-1], manifest
