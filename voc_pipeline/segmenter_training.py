"""Stage `train-seg`: train the DeepLabV3+ segmenter and evaluate it at each validation image's own size."""

from __future__ import annotations

import json
import logging

import keras
import numpy as np
import pandas as pd

from voc_pipeline.classes import CLASS_NAMES, NUM_CLASSES
from voc_pipeline.config import Config
from voc_pipeline.data import load_train_and_splits
from voc_pipeline.files import save_label_maps_atomic, write_json_atomic
from voc_pipeline.input_pipeline import IGNORE_LABEL, segmentation_dataset
from voc_pipeline.losses import SegmentationLoss
from voc_pipeline.plots import plot_learning_curves, plot_mask_overlays, plot_per_class_bars
from voc_pipeline.run_folder import prepare_run_folder, relevant_config, require_artifact, update_metrics
from voc_pipeline.scoring import segmentation_report
from voc_pipeline.segmenter import build_segmenter, predict_label_maps
from voc_pipeline.splits import positions_of
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

MODEL_FILE = "segmenter.keras"
VALIDATION_FILE = "segmenter_validation.npz"
MANIFEST_FILE = "segmenter.json"
NUM_LABELS = NUM_CLASSES + 1


def train_segmenter_model(config: Config, images, masks, fit_positions, validation_positions, strategy) -> keras.Model:
    """Build, train and save the segmenter; returns the best epoch's model."""
    settings = config.segmenter
    run_dir = config.run_dir
    with strategy.scope():
        model = build_segmenter(settings.backbone, settings.image_size, NUM_LABELS, settings.output_stride,
                                settings.weights, settings.width_multiplier, settings.aspp_filters, settings.decoder_filters)

    def compile_model(model, schedule):
        with strategy.scope():
            model.compile(
                optimizer=keras.optimizers.AdamW(schedule, weight_decay=settings.weight_decay),
                loss=SegmentationLoss(NUM_LABELS, IGNORE_LABEL, settings.dice_weight),
                metrics=[keras.metrics.MeanIoU(NUM_LABELS, ignore_class=IGNORE_LABEL, sparse_y_pred=False, name="mean_iou")],
            )

    train_data = segmentation_dataset(images, masks, fit_positions, settings.image_size, settings.batch_size,
                                      training=True, seed=config.seed, scale_range=tuple(settings.scale_range))
    validation_data = segmentation_dataset(images, masks, validation_positions, settings.image_size,
                                           settings.batch_size, training=False)
    phases = plan_phases(settings.weights, settings.head_epochs, settings.finetune_epochs, settings.head_learning_rate,
                         settings.finetune_learning_rate, settings.warmup_epochs, settings.unfreeze_fraction)
    checkpoint = run_dir / "checkpoints" / MODEL_FILE
    fit_in_phases(model, compile_model, phases, train_data, validation_data,
                  steps_per_epoch(len(fit_positions), settings.batch_size), checkpoint,
                  run_dir / "segmenter_history.csv", monitor="val_mean_iou", mode="max", patience=settings.patience,
                  identity={"config": relevant_config(config, "train-seg")})
    final = promote_checkpoint(checkpoint, run_dir / MODEL_FILE)
    plot_learning_curves(pd.read_csv(run_dir / "segmenter_history.csv"), run_dir / "segmenter_curves.png",
                         f"segmenter (DeepLabV3+ {settings.backbone}, output stride {settings.output_stride})")
    return keras.saving.load_model(final, compile=False)


def run_train_segmenter(config: Config) -> dict:
    """Stage `train-seg`: writes segmenter.keras, segmenter.json, history, curves, per-class IoU bars,
    validation overlays and the `segmenter` section of metrics.json; returns that section."""
    run_dir = prepare_run_folder(config, "train-seg")
    settings = config.segmenter
    seed_everything(config.seed, config.deterministic)
    policy = configure_precision(config.mixed_precision)
    train, splits = load_train_and_splits(config)
    fit_positions = positions_of(train.ids, splits.train_ids)
    validation_positions = positions_of(train.ids, splits.validation_ids)
    model = train_segmenter_model(config, train.images, train.masks, fit_positions, validation_positions, choose_strategy())
    write_json_atomic(run_dir / MANIFEST_FILE, {
        "model": MODEL_FILE, "backbone": settings.backbone, "image_size": settings.image_size,
        "output_stride": settings.output_stride, "flip_tta": settings.flip_tta, "precision_policy": policy,
    })

    validation_images = [train.images[position] for position in validation_positions]
    validation_masks = [train.masks[position] for position in validation_positions]
    predicted = predict_label_maps([model], validation_images, settings.batch_size, settings.flip_tta)
    save_label_maps_atomic(run_dir / VALIDATION_FILE, train.ids[validation_positions], predicted)
    report = segmentation_report(predicted, validation_masks)
    plain = predict_label_maps([model], validation_images, settings.batch_size, flip_tta=False) if settings.flip_tta else predicted
    report_plain = segmentation_report(plain, validation_masks)
    metrics = {
        "validation_images": len(validation_positions),
        "mean_iou": report["mean_iou"],
        "segmentation_dice": report["segmentation_dice"],
        "mean_iou_without_flip_tta": report_plain["mean_iou"],
        "segmentation_dice_without_flip_tta": report_plain["segmentation_dice"],
        "all_background_dice": report["all_background_dice"],
        "iou_per_class": {name: None if np.isnan(value) else float(value)
                          for name, value in zip(("background", *CLASS_NAMES), report["iou_per_label"])},
    }
    update_metrics(config, "segmenter", metrics)
    plot_per_class_bars({"IoU": report["iou_per_label"][1:]}, CLASS_NAMES, run_dir / "segmenter_per_class.png",
                        f"segmenter IoU on {len(validation_positions)} validation images (mIoU {report['mean_iou']:.3f})", "IoU")
    shown = validation_positions[: settings.overlay_images]
    plot_mask_overlays([train.images[p] for p in shown], [train.masks[p] for p in shown], predicted[: len(shown)],
                       [f"validation image {train.ids[p]}" for p in shown], CLASS_NAMES, run_dir / "segmenter_overlays.png")
    logger.info("segmenter: validation mIoU %.4f, segmentation Dice %.4f (all background %.4f)",
                metrics["mean_iou"], metrics["segmentation_dice"], metrics["all_background_dice"])
    return metrics


def load_segmenter(config: Config) -> tuple[keras.Model, dict]:
    """The run's trained segmenter and its manifest; errors name the stage that makes them."""
    manifest = json.loads(require_artifact(config, MANIFEST_FILE, "train-seg").read_text())
    return keras.saving.load_model(require_artifact(config, manifest["model"], "train-seg"), compile=False), manifest
