"""Stage `train-seg`: train the DeepLabV3+ segmenter and evaluate it at each validation image's own size."""

from __future__ import annotations

import logging

import keras
import numpy as np

from voc_pipeline import artifacts
from voc_pipeline.config import Config, training_settings
from voc_pipeline.core.classes import CLASS_NAMES, NUM_CLASSES, VOID_LABEL
from voc_pipeline.core.scoring import segmentation_report
from voc_pipeline.data.competition import fingerprint, load_split
from voc_pipeline.data.splits import positions_of
from voc_pipeline.files import write_json_atomic
from voc_pipeline.models.input_pipeline import segmentation_dataset
from voc_pipeline.models.losses import SegmentationLoss
from voc_pipeline.models.segmenter import label_maps_with_and_without_flip, segmenter_from_config
from voc_pipeline.models.training import (
    ModelFiles,
    choose_strategy,
    configure_precision,
    seed_everything,
    train_model,
)
from voc_pipeline.plots import plot_mask_overlays, plot_per_class_bars

logger = logging.getLogger(__name__)

NUM_LABELS = NUM_CLASSES + 1


def segmenter_files(config: Config) -> ModelFiles:
    run_dir = config.run_dir
    return ModelFiles(model=artifacts.SEGMENTER_MODEL.path(run_dir), history=artifacts.SEGMENTER_HISTORY.path(run_dir),
                      curves=artifacts.SEGMENTER_CURVES.path(run_dir),
                      checkpoint=run_dir / artifacts.CHECKPOINTS_DIR / artifacts.SEGMENTER_MODEL.pattern)


def train_segmenter_model(config: Config, images, masks, fit_positions, validation_positions, strategy) -> keras.Model:
    """Build, train and save the segmenter; returns the best epoch's model."""
    settings = config.segmenter
    with strategy.scope():
        model = segmenter_from_config(settings)

    def compile_arguments():
        return {"loss": SegmentationLoss(NUM_LABELS, VOID_LABEL, settings.dice_weight),
                "metrics": [keras.metrics.MeanIoU(NUM_LABELS, ignore_class=VOID_LABEL, sparse_y_pred=False,
                                                  name="mean_iou")]}

    train_data = segmentation_dataset(images, masks, fit_positions, settings.image_size, settings.batch_size,
                                      training=True, seed=config.seed, scale_range=tuple(settings.scale_range))
    validation_data = segmentation_dataset(images, masks, validation_positions, settings.image_size,
                                           settings.batch_size, training=False)
    identity = {"seed": config.seed, "segmenter": training_settings(settings), "data": fingerprint(config.data.root, "train"),
                "fit_positions": np.asarray(fit_positions).tolist()}
    return train_model(model, settings, compile_arguments, train_data, validation_data, len(fit_positions),
                       segmenter_files(config), "val_mean_iou", identity, strategy,
                       f"segmenter (DeepLabV3+ {settings.backbone}, output stride {settings.output_stride})")


def run_train_seg(config: Config) -> dict:
    """Stage `train-seg`: writes segmenter.keras, segmenter.json, history, curves,
    per-class IoU bars and validation overlays; returns the validation figures."""
    run_dir = config.run_dir
    settings = config.segmenter
    seed_everything(config.seed, config.deterministic)
    policy = configure_precision(config.mixed_precision)
    train = load_split(config.data.root, "train")
    splits = artifacts.read_splits(run_dir)
    fit_positions = positions_of(train.ids, splits.train_ids)
    validation_positions = positions_of(train.ids, splits.validation_ids)
    model = train_segmenter_model(config, train.images, train.masks, fit_positions, validation_positions, choose_strategy())
    write_json_atomic(artifacts.SEGMENTER_MANIFEST.path(run_dir), {
        "model": artifacts.SEGMENTER_MODEL.pattern, "backbone": settings.backbone, "image_size": settings.image_size,
        "output_stride": settings.output_stride, "precision_policy": policy,
    })

    validation_images = [train.images[position] for position in validation_positions]
    validation_masks = [train.masks[position] for position in validation_positions]
    predicted, predicted_plain = label_maps_with_and_without_flip(model, validation_images, settings.image_size,
                                                                  settings.output_stride, settings.batch_size)
    report = segmentation_report(predicted, validation_masks)
    report_plain = segmentation_report(predicted_plain, validation_masks)
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
    plot_per_class_bars({"IoU": report["iou_per_label"][1:]}, CLASS_NAMES, artifacts.SEGMENTER_PER_CLASS.path(run_dir),
                        f"segmenter IoU on {len(validation_positions)} validation images (mIoU {report['mean_iou']:.3f})", "IoU")
    shown = validation_positions[: settings.overlay_images]
    plot_mask_overlays([train.images[p] for p in shown], [train.masks[p] for p in shown], predicted[: len(shown)],
                       [f"validation image {train.ids[p]}" for p in shown], CLASS_NAMES,
                       artifacts.SEGMENTER_OVERLAYS.path(run_dir))
    logger.info("segmenter: validation mIoU %.4f, segmentation Dice %.4f (all background %.4f)",
                metrics["mean_iou"], metrics["segmentation_dice"], metrics["all_background_dice"])
    return metrics
