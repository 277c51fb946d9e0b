"""Stage `predict`: classify and segment the test set, reconcile the two heads with the tuned rule, and
save everything needed to rebuild a submission without running the models again.

It reads only the trained models, the outputs of `tune` and the test images.
"""

from __future__ import annotations

import logging

from voc_pipeline import artifacts
from voc_pipeline.config import Config
from voc_pipeline.core.joint import apply_joint_rule
from voc_pipeline.core.thresholds import apply_thresholds
from voc_pipeline.data.competition import load_split
from voc_pipeline.files import save_label_maps_atomic
from voc_pipeline.models.classifier import predict_probabilities
from voc_pipeline.models.segmenter import predict_label_maps

logger = logging.getLogger(__name__)


def run_predict(config: Config) -> dict:
    """Stage `predict`: writes test_predictions.npz (ids, classifier probabilities, flags before and after
    the joint rule, label maps at each test image's size); returns a summary."""
    run_dir = config.run_dir
    classifiers, _ = artifacts.load_classifiers(run_dir)
    thresholds, classifier_flip = artifacts.read_thresholds(run_dir)
    segmenter, segmenter_manifest = artifacts.load_segmenter(run_dir)
    rule, _ = artifacts.read_joint_rule(run_dir)
    test = load_split(config.data.root, "test")
    batch_size = config.predict.batch_size
    probabilities = predict_probabilities(classifiers, test.images, batch_size, classifier_flip)
    classifier_flags = apply_thresholds(probabilities, thresholds)
    raw_maps = predict_label_maps([segmenter], test.images, batch_size, segmenter_manifest["flip_tta"])
    flags, label_maps = apply_joint_rule(classifier_flags, raw_maps, rule)
    save_label_maps_atomic(artifacts.TEST_PREDICTIONS.path(run_dir), test.ids, label_maps, probabilities=probabilities,
                           flags=flags, classifier_flags=classifier_flags)
    summary = {"test_images": len(test), "joint_rule": rule.name,
               "flags_per_image": float(flags.sum(1).mean()),
               "flags_changed_by_joint_rule": int((flags != classifier_flags).sum())}
    logger.info("predicted %d test images (%.2f classes per image) into %s", len(test), summary["flags_per_image"],
                artifacts.TEST_PREDICTIONS.path(run_dir))
    return summary
