"""Stage `predict`: classify and segment the test set, reconcile the two heads, save everything needed
to rebuild a submission without running the models again."""

from __future__ import annotations

import json
import logging

import numpy as np

from voc_pipeline.classes import CLASS_NAMES
from voc_pipeline.classifier import predict_probabilities
from voc_pipeline.classifier_training import VALIDATION_FILE as CLASSIFIER_VALIDATION_FILE
from voc_pipeline.classifier_training import load_classifiers
from voc_pipeline.config import Config
from voc_pipeline.data import DataError, ImageSet, find_data_root, load_split, load_train_and_splits
from voc_pipeline.files import load_label_maps, save_label_maps_atomic, write_json_atomic
from voc_pipeline.joint import JointRule, apply_joint_rule, choose_joint_rule
from voc_pipeline.run_folder import prepare_run_folder, require_artifact, update_metrics
from voc_pipeline.segmenter import predict_label_maps
from voc_pipeline.segmenter_training import VALIDATION_FILE as SEGMENTER_VALIDATION_FILE
from voc_pipeline.segmenter_training import load_segmenter
from voc_pipeline.splits import positions_of
from voc_pipeline.thresholds import apply_thresholds
from voc_pipeline.tuning import THRESHOLDS_FILE

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "test_predictions.npz"
JOINT_RULE_FILE = "joint_rule.json"


def load_thresholds(config: Config) -> tuple[np.ndarray, bool]:
    """(per-class thresholds in class order, whether the classifier uses flip TTA) from `tune`."""
    payload = json.loads(require_artifact(config, THRESHOLDS_FILE, "tune").read_text())
    return np.array([payload["thresholds"][name] for name in CLASS_NAMES]), bool(payload["flip_tta"])


def validation_predictions(config: Config, train: ImageSet):
    """Validation flags (tuned thresholds) and label maps of the images both heads were validated on,
    with their true labels and masks (from `train`): the ground on which the joint rule is chosen and reported."""
    thresholds, flip_tta = load_thresholds(config)
    with np.load(require_artifact(config, CLASSIFIER_VALIDATION_FILE, "train-cls"), allow_pickle=False) as saved:
        classifier_ids = saved["ids"]
        probabilities = saved["probabilities_flip_tta" if flip_tta else "probabilities"]
    arrays, label_maps = load_label_maps(require_artifact(config, SEGMENTER_VALIDATION_FILE, "train-seg"))
    segmenter_ids = arrays["ids"]
    shared = np.intersect1d(classifier_ids, segmenter_ids)
    if shared.size == 0:
        raise DataError("the classifier's and the segmenter's validation images do not overlap; "
                        "train both on the same run's splits")
    flags = apply_thresholds(probabilities[positions_of(classifier_ids, shared)], thresholds)
    maps = [label_maps[position] for position in positions_of(segmenter_ids, shared)]
    truth_positions = positions_of(train.ids, shared)
    return shared, flags, maps, train.labels[truth_positions], [train.masks[p] for p in truth_positions]


def tune_joint_rule(config: Config, validation) -> tuple[JointRule, list[dict]]:
    """Choose the joint rule on `validation` (from validation_predictions); write joint_rule.json and the
    `joint` section of metrics.json."""
    ids, flags, maps, labels, masks = validation
    rule, table = choose_joint_rule(flags, maps, labels, masks, config.predict.joint_area_grid)
    write_json_atomic(config.run_dir / JOINT_RULE_FILE, {"rule": rule.to_dict(), "validation_images": len(ids),
                                                         "candidates": table})
    update_metrics(config, "joint", {"chosen": rule.name, "validation_images": len(ids), "candidates": table})
    independent = table[0]
    chosen = next(row for row in table if row["name"] == rule.name)
    logger.info("joint rule: %s (validation score %.4f; independent heads %.4f)", rule.name, chosen["score"],
                independent["score"])
    return rule, table


def run_predict(config: Config) -> dict:
    """Stage `predict`: writes test_predictions.npz (ids, classifier probabilities, flags, label maps at
    each test image's size) and joint_rule.json; returns a summary."""
    run_dir = prepare_run_folder(config, "predict")
    classifiers, _ = load_classifiers(config)
    thresholds, classifier_flip = load_thresholds(config)
    segmenter, segmenter_manifest = load_segmenter(config)
    train, _ = load_train_and_splits(config)
    rule, _ = tune_joint_rule(config, validation_predictions(config, train))
    test = load_split(find_data_root(config.data.root), "test")
    if len(test) == 0:
        raise DataError(f"{test.root / 'test' / 'test_set.csv'} lists no test image")
    batch_size = config.predict.batch_size
    probabilities = predict_probabilities(classifiers, test.images, batch_size, classifier_flip)
    classifier_flags = apply_thresholds(probabilities, thresholds)
    raw_maps = predict_label_maps([segmenter], test.images, batch_size, segmenter_manifest["flip_tta"])
    flags, label_maps = apply_joint_rule(classifier_flags, raw_maps, rule)
    save_label_maps_atomic(run_dir / PREDICTIONS_FILE, test.ids, label_maps, probabilities=probabilities,
                           flags=flags, classifier_flags=classifier_flags)
    summary = {"test_images": len(test), "joint_rule": rule.name,
               "flags_per_image": float(flags.sum(1).mean()),
               "flags_changed_by_joint_rule": int((flags != classifier_flags).sum())}
    update_metrics(config, "predict", summary)
    logger.info("predicted %d test images (%.2f classes per image) into %s", len(test), summary["flags_per_image"],
                run_dir / PREDICTIONS_FILE)
    return summary
