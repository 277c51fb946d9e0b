"""Stage `predict`: classify and segment the test set with what `tune` chose, and save everything needed to
rebuild a submission without running the models again.

It reads only the final models (those stage `refit` names: the first ones, or their refit on every image),
the outputs of `tune` and the test images; each image goes through the same InferencePlan.decide that
`tune` scored on validation, one batch at a time.
"""

from __future__ import annotations

import logging

import numpy as np

from voc_pipeline import artifacts
from voc_pipeline.config import Config
from voc_pipeline.core.fusion import SOURCE_TITLES
from voc_pipeline.data.competition import load_split
from voc_pipeline.files import save_label_maps_atomic
from voc_pipeline.models.classifier import predict_probabilities
from voc_pipeline.models.segmenter import probability_maps

logger = logging.getLogger(__name__)


def run_predict(config: Config) -> dict:
    """Stage `predict`: writes test_predictions.npz (ids, the classifier's probabilities, the flags' source
    probabilities, final flags, label maps at each test image's size); returns a summary."""
    run_dir = config.run_dir
    settings = config.inference
    classifiers, segmenter, final_models = artifacts.load_final_models(run_dir)
    plan, _ = artifacts.read_inference_plan(run_dir)
    manifest = final_models["segmenter"]
    test = load_split(config.data.root, "test")
    classifier_probabilities = predict_probabilities(classifiers, test.images, settings.batch_size, settings.classifier_flip_tta)
    sources, flags, label_maps = [], [], []
    maps = probability_maps(segmenter, test.images, int(manifest["image_size"]), int(manifest["output_stride"]),
                            settings.batch_size, settings.segmenter_flip_tta, plan.scales)
    for image_probabilities, segmenter_probabilities in zip(classifier_probabilities, maps):
        source, final, labels = plan.decide(segmenter_probabilities, image_probabilities)
        sources.append(source)
        flags.append(final)
        label_maps.append(labels)
    flags = np.array(flags, dtype=np.int8)
    save_label_maps_atomic(artifacts.TEST_PREDICTIONS.path(run_dir), test.ids, label_maps,
                           probabilities=classifier_probabilities, source_probabilities=np.array(sources), flags=flags)
    summary = {"test_images": len(test), "joint_rule": plan.rule.name, "scales": list(plan.scales),
               "flags_from": SOURCE_TITLES[plan.source],
               "flags_per_image": float(flags.sum(1).mean()),
               "models": {head: final_models[head]["models"] for head in ("classifier", "segmenter")}}
    logger.info("predicted %d test images (%.2f classes per image) into %s", len(test), summary["flags_per_image"],
                artifacts.TEST_PREDICTIONS.path(run_dir))
    return summary
