"""Stage `train-cls`: train the multi-label classifier and save its validation probabilities.

The training itself is the classifier's recipe (`voc_pipeline.models.heads`): the phases its weights call
for, the best epoch by validation PR-AUC. With `classifier.kfold`, one model per fold gives out-of-fold
probabilities for every training image, and the folds are ensembled at prediction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from voc_pipeline import artifacts
from voc_pipeline.config import Config
from voc_pipeline.core.classes import CLASS_NAMES, NUM_CLASSES
from voc_pipeline.core.scoring import average_precisions
from voc_pipeline.data.competition import ImageSet
from voc_pipeline.data.splits import Splits, positions_of
from voc_pipeline.files import save_npz_atomic, write_json_atomic
from voc_pipeline.models.classifier import predict_plain_and_flip_tta
from voc_pipeline.models.heads import CLASSIFIER, draw_training_examples, train_head, training_setup
from voc_pipeline.models.training import choose_strategy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingPart:
    """One model to train: its file tag and the training and validation positions in the train set."""

    tag: str
    fit_positions: np.ndarray
    validation_positions: np.ndarray


def training_parts(train: ImageSet, splits: Splits, kfold: bool) -> list[TrainingPart]:
    """The holdout split, or one part per fold (each fold's validation images are the others' training images)."""
    if not kfold:
        return [TrainingPart("", positions_of(train.ids, splits.train_ids), positions_of(train.ids, splits.validation_ids))]
    parts = []
    for fold, validation_ids in enumerate(splits.fold_validation_ids):
        validation_positions = positions_of(train.ids, validation_ids)
        fit_positions = np.setdiff1d(np.arange(len(train)), validation_positions)
        parts.append(TrainingPart(f"_fold{fold}", fit_positions, validation_positions))
    return parts


def warn_about_missing_classes(labels: np.ndarray, where: str) -> list[str]:
    """Warn about classes without a positive example in `labels`; return their names."""
    missing = [CLASS_NAMES[index] for index in np.flatnonzero(labels.sum(0) == 0)]
    if missing:
        logger.warning("%s has no positive example of: %s; the model cannot learn them and their thresholds "
                       "fall back to the default", where, ", ".join(missing))
    return missing


def run_train_cls(config: Config) -> dict:
    """Stage `train-cls`: writes classifier*.keras, classifier.json, classifier_validation.npz, history and
    curves; returns the validation figures."""
    run_dir = config.run_dir
    settings = config.classifier
    train, splits, policy = training_setup(config)
    parts = training_parts(train, splits, settings.kfold)
    strategy = choose_strategy()

    probabilities = np.full((len(train), NUM_CLASSES), np.nan)
    flipped = np.full((len(train), NUM_CLASSES), np.nan)
    for part in parts:
        warn_about_missing_classes(train.labels[part.fit_positions], f"the training part of classifier{part.tag}")
        trained = train_head(config, CLASSIFIER, train, part.fit_positions, part.validation_positions, strategy, part.tag)
        validation_images = [train.images[position] for position in part.validation_positions]
        probabilities[part.validation_positions], flipped[part.validation_positions] = predict_plain_and_flip_tta(
            [trained.model], validation_images, settings.batch_size)
    if settings.copy_paste:
        draw_training_examples(config, CLASSIFIER, train, parts[0].fit_positions)

    evaluated = np.flatnonzero(~np.isnan(probabilities[:, 0]))
    labels = train.labels[evaluated]
    save_npz_atomic(artifacts.CLASSIFIER_VALIDATION.path(run_dir), ids=train.ids[evaluated], labels=labels,
                    probabilities=probabilities[evaluated], probabilities_flip_tta=flipped[evaluated])
    validation = "out-of-fold" if settings.kfold else "holdout"
    write_json_atomic(artifacts.CLASSIFIER_MANIFEST.path(run_dir), {
        "models": [artifacts.classifier_file(part.tag) for part in parts],
        "backbone": settings.backbone, "image_size": settings.image_size, "loss": settings.loss,
        "validation": validation, "precision_policy": policy, "training": trained.facts,
    })
    plain_ap, flip_ap = average_precisions(labels, probabilities[evaluated]), average_precisions(labels, flipped[evaluated])
    metrics = {
        "validation": validation,
        "validation_images": int(len(evaluated)),
        "mean_average_precision": float(np.nanmean(plain_ap)),
        "mean_average_precision_flip_tta": float(np.nanmean(flip_ap)),
        "average_precision_per_class": dict(zip(CLASS_NAMES, [None if np.isnan(v) else float(v) for v in plain_ap])),
    }
    logger.info("classifier: validation mAP %.4f (flip TTA %.4f) on %d images", metrics["mean_average_precision"],
                metrics["mean_average_precision_flip_tta"], len(evaluated))
    return metrics
