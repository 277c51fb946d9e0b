"""Stage `train-cls`: train the multi-label classifier and save its validation probabilities.

Pretrained weights train in two phases (the head on a frozen backbone, then the top of the backbone
at a lower rate with warm-up and cosine decay, batch norm frozen); random weights train everything in
one phase. The best epoch by validation PR-AUC is kept. With `classifier.kfold`, one model per fold
gives out-of-fold probabilities for every training image, and the folds are ensembled at prediction.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from voc_pipeline.classes import CLASS_NAMES, NUM_CLASSES
from voc_pipeline.classifier import build_classifier, predict_probabilities
from voc_pipeline.config import Config
from voc_pipeline.data import ImageSet, load_train_and_splits
from voc_pipeline.files import save_npz_atomic, write_json_atomic
from voc_pipeline.input_pipeline import classification_dataset, object_box
from voc_pipeline.losses import classifier_loss
from voc_pipeline.plots import plot_learning_curves
from voc_pipeline.run_folder import prepare_run_folder, relevant_config, require_artifact, update_metrics
from voc_pipeline.splits import Splits, positions_of
from voc_pipeline.training import (
    choose_strategy,
    configure_precision,
    fit_in_phases,
    plan_phases,
    promote_checkpoint,
    seed_everything,
    steps_per_epoch,
)

logger = logging.getLogger(__name__)

MANIFEST_FILE = "classifier.json"
VALIDATION_FILE = "classifier_validation.npz"


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


def train_one_classifier(config: Config, train: ImageSet, part: TrainingPart, boxes: np.ndarray, strategy) -> keras.Model:
    """Build, train and save one classifier; returns the best epoch's model."""
    settings = config.classifier
    run_dir = config.run_dir
    with strategy.scope():
        model = build_classifier(settings.backbone, settings.image_size, NUM_CLASSES, settings.weights,
                                 settings.dropout, settings.width_multiplier)

    def compile_model(model, schedule):
        with strategy.scope():
            model.compile(
                optimizer=keras.optimizers.AdamW(schedule, weight_decay=settings.weight_decay),
                loss=classifier_loss(settings.loss),
                metrics=[keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy"),
                         keras.metrics.AUC(curve="PR", multi_label=True, num_labels=NUM_CLASSES, from_logits=True,
                                           name="pr_auc")],
            )

    train_data = classification_dataset(train.images, train.labels, part.fit_positions, settings.image_size,
                                        settings.batch_size, training=True, seed=config.seed, boxes=boxes)
    validation_data = classification_dataset(train.images, train.labels, part.validation_positions,
                                             settings.image_size, settings.batch_size, training=False)
    phases = plan_phases(settings.weights, settings.head_epochs, settings.finetune_epochs, settings.head_learning_rate,
                         settings.finetune_learning_rate, settings.warmup_epochs, settings.unfreeze_fraction)
    checkpoint = run_dir / "checkpoints" / f"classifier{part.tag}.keras"
    fit_in_phases(model, compile_model, phases, train_data, validation_data,
                  steps_per_epoch(len(part.fit_positions), settings.batch_size), checkpoint,
                  run_dir / f"classifier_history{part.tag}.csv", monitor="val_pr_auc", mode="max",
                  patience=settings.patience, identity={"config": relevant_config(config, "train-cls"), "part": part.tag})
    final = promote_checkpoint(checkpoint, run_dir / f"classifier{part.tag}.keras")
    plot_learning_curves(pd.read_csv(run_dir / f"classifier_history{part.tag}.csv"),
                         run_dir / f"classifier_curves{part.tag}.png", f"classifier{part.tag} ({settings.backbone})")
    return keras.saving.load_model(final, compile=False)


def average_precisions(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Average precision per class (NaN for a class without positives)."""
    return np.array([average_precision_score(labels[:, index], probabilities[:, index])
                     if labels[:, index].any() else np.nan for index in range(labels.shape[1])])


def run_train_classifier(config: Config) -> dict:
    """Stage `train-cls`: writes classifier*.keras, classifier.json, classifier_validation.npz, history, curves
    and the `classifier` section of metrics.json; returns that section."""
    run_dir = prepare_run_folder(config, "train-cls")
    settings = config.classifier
    seed_everything(config.seed, config.deterministic)
    policy = configure_precision(config.mixed_precision)
    train, splits = load_train_and_splits(config)
    boxes = np.stack([object_box(mask) for mask in train.masks])
    parts = training_parts(train, splits, settings.kfold)
    strategy = choose_strategy()

    probabilities = np.full((len(train), NUM_CLASSES), np.nan)
    flipped = np.full((len(train), NUM_CLASSES), np.nan)
    for part in parts:
        warn_about_missing_classes(train.labels[part.fit_positions], f"the training part of classifier{part.tag}")
        model = train_one_classifier(config, train, part, boxes, strategy)
        validation_images = [train.images[position] for position in part.validation_positions]
        probabilities[part.validation_positions] = predict_probabilities([model], validation_images, settings.batch_size, False)
        flipped[part.validation_positions] = predict_probabilities([model], validation_images, settings.batch_size, True)

    evaluated = np.flatnonzero(~np.isnan(probabilities[:, 0]))
    labels = train.labels[evaluated]
    save_npz_atomic(run_dir / VALIDATION_FILE, ids=train.ids[evaluated], labels=labels,
                    probabilities=probabilities[evaluated], probabilities_flip_tta=flipped[evaluated])
    write_json_atomic(run_dir / MANIFEST_FILE, {
        "models": [f"classifier{part.tag}.keras" for part in parts],
        "backbone": settings.backbone, "image_size": settings.image_size, "flip_tta": settings.flip_tta,
        "validation": "out-of-fold" if settings.kfold else "holdout", "precision_policy": policy,
    })
    plain_ap, flip_ap = average_precisions(labels, probabilities[evaluated]), average_precisions(labels, flipped[evaluated])
    metrics = {
        "validation": "out-of-fold" if settings.kfold else "holdout",
        "validation_images": int(len(evaluated)),
        "mean_average_precision": float(np.nanmean(plain_ap)),
        "mean_average_precision_flip_tta": float(np.nanmean(flip_ap)),
        "average_precision_per_class": dict(zip(CLASS_NAMES, [None if np.isnan(v) else float(v) for v in plain_ap])),
    }
    update_metrics(config, "classifier", metrics)
    logger.info("classifier: validation mAP %.4f (flip TTA %.4f) on %d images", metrics["mean_average_precision"],
                metrics["mean_average_precision_flip_tta"], len(evaluated))
    return metrics


def load_classifiers(config: Config) -> tuple[list[keras.Model], dict]:
    """The run's trained classifier(s) and their manifest; errors name the stage that makes them."""
    manifest = json.loads(require_artifact(config, MANIFEST_FILE, "train-cls").read_text())
    models = [keras.saving.load_model(require_artifact(config, name, "train-cls"), compile=False) for name in manifest["models"]]
    return models, manifest
