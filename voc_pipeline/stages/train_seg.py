"""Stage `train-seg`: train the DeepLabV3+ segmenter and evaluate it at each validation image's own size."""

from __future__ import annotations

import logging

import numpy as np

from voc_pipeline import artifacts
from voc_pipeline.config import Config
from voc_pipeline.core.classes import CLASS_NAMES
from voc_pipeline.core.scoring import segmentation_report
from voc_pipeline.data.splits import positions_of
from voc_pipeline.files import write_json_atomic
from voc_pipeline.models.heads import SEGMENTER, draw_training_examples, train_head, training_setup
from voc_pipeline.models.segmenter import label_maps_with_and_without_flip
from voc_pipeline.models.training import choose_strategy
from voc_pipeline.plots import plot_mask_overlays, plot_per_class_bars

logger = logging.getLogger(__name__)


def run_train_seg(config: Config) -> dict:
    """Stage `train-seg`: writes segmenter.keras, segmenter.json, history, curves,
    per-class IoU bars and validation overlays; returns the validation figures."""
    run_dir = config.run_dir
    settings = config.segmenter
    train, splits, policy = training_setup(config)
    fit_positions = positions_of(train.ids, splits.train_ids)
    validation_positions = positions_of(train.ids, splits.validation_ids)
    trained = train_head(config, SEGMENTER, train, fit_positions, validation_positions, choose_strategy())
    if settings.copy_paste:
        draw_training_examples(config, SEGMENTER, train, fit_positions)
    write_json_atomic(artifacts.SEGMENTER_MANIFEST.path(run_dir), {
        "model": artifacts.SEGMENTER_MODEL.pattern, "backbone": settings.backbone, "image_size": settings.image_size,
        "output_stride": settings.output_stride, "precision_policy": policy, "training": trained.facts,
    })

    validation_images = [train.images[position] for position in validation_positions]
    validation_masks = [train.masks[position] for position in validation_positions]
    predicted, predicted_plain = label_maps_with_and_without_flip(trained.model, validation_images, settings.image_size,
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
