"""Stage `refit`: name the models that make the test predictions, training them again on every image if asked.

With `classifier.refit_all` or `segmenter.refit_all`, a head is trained again from its starting weights on
the fit and validation images together, for the epochs of each phase that its first training had run when
validation chose its kept epoch (nothing is held out, so every epoch runs and the last is kept). Tune has
already chosen the thresholds and rules on validation with the first models; the refit models inherit them.
A K-fold classifier already learnt from every image and stays as it is. Without refit_all a head's first
model is named as it is, and nothing trains.

final_models.json records, for each head, the model files, their hashes and what they were trained on;
`predict` loads exactly those and the report says which they were.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np

from voc_pipeline import artifacts
from voc_pipeline.config import Config, training_settings
from voc_pipeline.files import hash_file, write_json_atomic

logger = logging.getLogger(__name__)


def first_models(run_dir, names: list[str], images: int, trained_on: str) -> dict:
    """The final-model entry of a head whose first model(s) make the test predictions."""
    return {"models": names, "sha256": [hash_file(run_dir / name) for name in names], "trained_on": trained_on,
            "images": images, "refit": False}


def every_labelled_position(train, splits) -> np.ndarray:
    """Positions in the train set of the fit and the validation images together."""
    from voc_pipeline.data.splits import positions_of

    return np.sort(np.concatenate([positions_of(train.ids, splits.train_ids), positions_of(train.ids, splits.validation_ids)]))


def model_files(config: Config, head: str):
    from voc_pipeline.models.training import ModelFiles

    run_dir = config.run_dir
    return ModelFiles(model=run_dir / artifacts.refit_model_file(head), history=run_dir / artifacts.refit_history_file(head),
                      curves=run_dir / artifacts.refit_curves_file(head),
                      checkpoint=run_dir / artifacts.CHECKPOINTS_DIR / artifacts.refit_model_file(head))


def refit_classifier(config: Config, train, positions: np.ndarray, phases, strategy) -> None:
    """Train the classifier again on `positions` through `phases`; saves refit_classifier.keras."""
    from voc_pipeline.data.competition import fingerprint
    from voc_pipeline.models.classifier import classifier_from_config
    from voc_pipeline.models.input_pipeline import classification_dataset, object_box
    from voc_pipeline.models.losses import classifier_loss
    from voc_pipeline.models.training import train_model

    settings = config.classifier
    with strategy.scope():
        model = classifier_from_config(settings)
    boxes = np.stack([object_box(mask) for mask in train.masks])
    train_data = classification_dataset(train.images, train.labels, positions, settings.image_size, settings.batch_size,
                                        training=True, seed=config.seed, boxes=boxes)
    identity = {"seed": config.seed, "classifier": training_settings(settings), "refit": [asdict(phase) for phase in phases],
                "data": fingerprint(config.data.root, "train"), "ids": train.ids[positions].tolist()}
    train_model(model, settings, lambda: {"loss": classifier_loss(settings.loss)}, train_data, None, len(positions),
                model_files(config, "classifier"), None, identity, strategy,
                f"classifier refit on {len(positions)} images ({settings.backbone})", phases=phases)


def refit_segmenter(config: Config, train, positions: np.ndarray, phases, strategy) -> None:
    """Train the segmenter again on `positions` through `phases`; saves refit_segmenter.keras."""
    from voc_pipeline.core.classes import NUM_CLASSES, VOID_LABEL
    from voc_pipeline.data.competition import fingerprint
    from voc_pipeline.models.input_pipeline import segmentation_dataset
    from voc_pipeline.models.losses import SegmentationLoss
    from voc_pipeline.models.segmenter import segmenter_from_config
    from voc_pipeline.models.training import train_model

    settings = config.segmenter
    with strategy.scope():
        model = segmenter_from_config(settings)
    train_data = segmentation_dataset(train.images, train.masks, positions, settings.image_size, settings.batch_size,
                                      training=True, seed=config.seed, scale_range=tuple(settings.scale_range))
    identity = {"seed": config.seed, "segmenter": training_settings(settings), "refit": [asdict(phase) for phase in phases],
                "data": fingerprint(config.data.root, "train"), "ids": train.ids[positions].tolist()}
    train_model(model, settings, lambda: {"loss": SegmentationLoss(NUM_CLASSES + 1, VOID_LABEL, settings.dice_weight)},
                train_data, None, len(positions), model_files(config, "segmenter"), None, identity, strategy,
                f"segmenter refit on {len(positions)} images (DeepLabV3+ {settings.backbone})", phases=phases)


def chosen_phases(run_dir, settings, history_name: str, stage: str, monitor: str):
    """The refit's phases: the planned ones cut to the epochs that stage `stage`'s kept model had trained."""
    from voc_pipeline.models.training import plan_phases, refit_phases

    return refit_phases(plan_phases(settings), artifacts.read_history(run_dir, history_name, stage), monitor)


def run_refit(config: Config) -> dict:
    """Stage `refit`: writes final_models.json and, for each head with refit_all, refit_<head>.keras with its
    history and curves; returns what each head's final model was trained on."""
    run_dir = config.run_dir
    splits = artifacts.read_splits(run_dir)
    classifier_manifest = artifacts.read_json(artifacts.CLASSIFIER_MANIFEST, run_dir)
    segmenter_manifest = artifacts.read_json(artifacts.SEGMENTER_MANIFEST, run_dir)
    fit_images, every_image = len(splits.train_ids), len(splits.train_ids) + len(splits.validation_ids)
    kfold = classifier_manifest.get("validation") == "out-of-fold"
    if kfold:
        classifier = first_models(run_dir, classifier_manifest["models"], every_image,
                                  "K-fold ensemble (each fold's model on the other folds: every image)")
        if config.classifier.refit_all:
            logger.info("classifier.refit_all: the K-fold classifier already learnt from every image; it stays as it is")
    else:
        classifier = first_models(run_dir, classifier_manifest["models"], fit_images, "fit part")
    segmenter = first_models(run_dir, [segmenter_manifest["model"]], fit_images, "fit part")
    refit_classifier_now = config.classifier.refit_all and not kfold
    if refit_classifier_now or config.segmenter.refit_all:
        from voc_pipeline.data.competition import load_split
        from voc_pipeline.models.training import choose_strategy, configure_precision, seed_everything

        seed_everything(config.seed, config.deterministic)
        policy = configure_precision(config.mixed_precision)
        train = load_split(config.data.root, "train")
        positions = every_labelled_position(train, splits)
        strategy = choose_strategy()
        if refit_classifier_now:
            phases = chosen_phases(run_dir, config.classifier, artifacts.classifier_history_file(""), "train-cls",
                                   "val_pr_auc")
            logger.info("refitting the classifier on %d images: %s", len(positions), describe_phases(phases))
            refit_classifier(config, train, positions, phases, strategy)
            classifier = refit_entry(run_dir, "classifier", len(positions), phases, policy)
        if config.segmenter.refit_all:
            phases = chosen_phases(run_dir, config.segmenter, artifacts.SEGMENTER_HISTORY.pattern, "train-seg",
                                   "val_mean_iou")
            logger.info("refitting the segmenter on %d images: %s", len(positions), describe_phases(phases))
            refit_segmenter(config, train, positions, phases, strategy)
            segmenter = refit_entry(run_dir, "segmenter", len(positions), phases, policy)

    classifier |= {"backbone": classifier_manifest["backbone"], "image_size": classifier_manifest["image_size"]}
    segmenter |= {"backbone": segmenter_manifest["backbone"], "image_size": segmenter_manifest["image_size"],
                  "output_stride": segmenter_manifest["output_stride"]}
    write_json_atomic(artifacts.FINAL_MODELS.path(run_dir), {"classifier": classifier, "segmenter": segmenter})
    for head, entry in (("classifier", classifier), ("segmenter", segmenter)):
        logger.info("the test predictions' %s: %s (%s, %d images)", head, ", ".join(entry["models"]), entry["trained_on"],
                    entry["images"])
    return {head: {key: entry[key] for key in ("models", "trained_on", "images", "refit")} | {"epochs": entry.get("epochs", {})}
            for head, entry in (("classifier", classifier), ("segmenter", segmenter))}


def describe_phases(phases) -> str:
    return ", ".join(f"{phase.name} {phase.epochs} epochs" for phase in phases)


def refit_entry(run_dir, head: str, images: int, phases, policy: str) -> dict:
    """The final-model entry of a head that was refit on every image."""
    name = artifacts.refit_model_file(head)
    return {"models": [name], "sha256": [hash_file(run_dir / name)], "trained_on": "fit + validation", "images": images,
            "refit": True, "epochs": {phase.name: phase.epochs for phase in phases}, "precision_policy": policy}
