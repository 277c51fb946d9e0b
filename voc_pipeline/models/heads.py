"""One recipe per head, and the one way a head is trained.

A `Head` (the classifier, the segmenter) knows everything that differs between the two: its configuration
section, its builder, its input pipeline, its loss and metrics, the validation metric that keeps the best
epoch, and its file names in the run folder. `train_head` (first training, validation picks the epoch) and
`refit_head` (training again on every labelled image for the epochs validation chose) run the same steps for
either head: build under the distribution strategy, feed, fit in phases with resumable checkpoints, keep the
chosen epoch, save the history and curves, and say what the training froze and started from. Stages
`train-cls`, `train-seg`, `refit` and the benchmarks all call these; adding a head option or a loss is a
change in this file.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from voc_pipeline import artifacts
from voc_pipeline.backbone_table import backbone, describe_initial_weights, is_pretrained
from voc_pipeline.config import training_settings
from voc_pipeline.config_view import unwrapped
from voc_pipeline.core.classes import CLASS_NAMES, NUM_CLASSES, VOID_LABEL
from voc_pipeline.data.competition import fingerprint, load_split
from voc_pipeline.files import hash_file, reporting_full_disk
from voc_pipeline.models.classifier import classifier_from_config
from voc_pipeline.models.features import cached_features, feature_dataset, split_at_head
from voc_pipeline.models.input_pipeline import classification_dataset, object_box, segmentation_dataset
from voc_pipeline.models.losses import SegmentationLoss, classifier_loss
from voc_pipeline.models.portable import record_option_defaults
from voc_pipeline.models.segmenter import segmenter_from_config
from voc_pipeline.models.training import (
    Phase,
    configure_precision,
    fit_in_phases,
    phase_optimizer,
    plan_phases,
    promote_checkpoint,
    seed_everything,
    steps_per_epoch,
    write_history,
)
from voc_pipeline.plots import plot_learning_curves, plot_training_examples

logger = logging.getLogger(__name__)

NUM_LABELS = NUM_CLASSES + 1  # the segmenter's labels: background and the 20 classes


@dataclass(frozen=True)
class ModelFiles:
    """Where one trained model's files go in the run folder.

    Attributes:
        model: the chosen epoch's model, at its final name.
        history: the per-epoch history CSV.
        curves: the learning-curves PNG.
        checkpoint: the chosen checkpoint while training (beside it, the state that resumes an interruption).
    """

    model: Path
    history: Path
    curves: Path
    checkpoint: Path

    @classmethod
    def in_run(cls, run_dir: Path, model: str, history: str, curves: str) -> ModelFiles:
        run_dir = Path(run_dir)
        return cls(run_dir / model, run_dir / history, run_dir / curves, run_dir / artifacts.CHECKPOINTS_DIR / model)


class Head:
    """What one head is: its section, model, data, loss, metrics, chosen-epoch metric and files.

    Attributes:
        name: "classifier" or "segmenter": its configuration section and the stem of its file names.
        monitor: the validation metric (higher is better) whose best epoch training keeps.
    """

    name: str
    monitor: str
    augmented_examples: artifacts.Artifact

    def settings(self, config):
        """The head's configuration section."""
        return getattr(config, self.name)

    def build(self, settings, weights: str | None = None) -> keras.Model:
        """The uncompiled model from its section (`weights` overrides the section's, e.g. "none" to benchmark)."""
        raise NotImplementedError

    def dataset(self, settings, data, positions: np.ndarray, training: bool, seed: int) -> tf.data.Dataset:
        """Batches of `data` (images, labels, masks) at `positions`, augmented and shuffled when `training`."""
        raise NotImplementedError

    def loss(self, settings) -> keras.losses.Loss:
        raise NotImplementedError

    def metrics(self, settings) -> list[keras.metrics.Metric]:
        raise NotImplementedError

    def describe(self, settings) -> str:
        """The model in a few words, for titles and logs."""
        raise NotImplementedError

    def model_files(self, run_dir: Path, tag: str = "") -> ModelFiles:
        """The files of the first training (`tag`: "" or a fold's "_fold<k>")."""
        raise NotImplementedError

    def trains_on_cached_features(self, settings) -> bool:
        """Whether the head trains alone on its frozen encoder's cached features (a token head, freeze_backbone)."""
        row = backbone(settings.backbone)
        return settings.freeze_backbone and (row.classifier_head if self.name == "classifier" else row.segmenter_head) == "tokens"

    def refit_files(self, run_dir: Path) -> ModelFiles:
        """The files of the refit on every labelled image."""
        return ModelFiles.in_run(run_dir, artifacts.refit_model_file(self.name), artifacts.refit_history_file(self.name),
                                 artifacts.refit_curves_file(self.name))

    def self_trained_files(self, run_dir: Path) -> ModelFiles:
        """The files of self-training on fit + pseudo-labelled test images."""
        stem = Path(artifacts.self_trained_model_file(self.name)).stem
        return ModelFiles.in_run(run_dir, f"{stem}.keras", f"{stem}_history.csv", f"{stem}_curves.png")


class ClassifierHead(Head):
    """Backbone, pooling, dropout and 20 sigmoid logits; the best epoch by validation PR-AUC."""

    name = "classifier"
    monitor = "val_pr_auc"
    augmented_examples = artifacts.CLASSIFIER_AUGMENTED

    def build(self, settings, weights: str | None = None) -> keras.Model:
        return classifier_from_config(settings, weights)

    def dataset(self, settings, data, positions, training, seed):
        # The training crop keeps each image's objects, whose box its mask gives.
        boxes = np.stack([object_box(mask) for mask in data.masks]) if training and data.masks is not None else None
        return classification_dataset(data.images, data.labels, positions, settings.image_size, settings.batch_size,
                                      training=training, seed=seed, boxes=boxes, masks=data.masks,
                                      copy_paste=settings.copy_paste)

    def loss(self, settings):
        return classifier_loss(settings.loss)

    def metrics(self, settings):
        return [keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy"),
                keras.metrics.AUC(curve="PR", multi_label=True, num_labels=NUM_CLASSES, from_logits=True, name="pr_auc")]

    def describe(self, settings):
        return settings.backbone

    def model_files(self, run_dir, tag=""):
        return ModelFiles.in_run(run_dir, artifacts.classifier_file(tag), artifacts.classifier_history_file(tag),
                                 artifacts.classifier_curves_file(tag))


class SegmenterHead(Head):
    """DeepLabV3+ with 21 logits per pixel, void ignored by the loss; the best epoch by validation mIoU."""

    name = "segmenter"
    monitor = "val_mean_iou"
    augmented_examples = artifacts.SEGMENTER_AUGMENTED

    def build(self, settings, weights: str | None = None) -> keras.Model:
        return segmenter_from_config(settings, weights)

    def dataset(self, settings, data, positions, training, seed):
        return segmentation_dataset(data.images, data.masks, positions, settings.image_size, settings.batch_size,
                                    training=training, seed=seed, scale_range=tuple(settings.scale_range),
                                    copy_paste=settings.copy_paste)

    def loss(self, settings):
        return SegmentationLoss(NUM_LABELS, VOID_LABEL, settings.dice_weight, settings.presence_weight)

    def metrics(self, settings):
        return [keras.metrics.MeanIoU(NUM_LABELS, ignore_class=VOID_LABEL, sparse_y_pred=False, name="mean_iou")]

    def describe(self, settings):
        head = backbone(settings.backbone).segmenter_head
        if head == "deeplab":
            return f"DeepLabV3+ {settings.backbone}, output stride {settings.output_stride}"
        return f"{'SegFormer' if head == 'segformer' else 'patch tokens of'} {settings.backbone}"

    def model_files(self, run_dir, tag=""):
        return ModelFiles.in_run(run_dir, artifacts.SEGMENTER_MODEL.pattern, artifacts.SEGMENTER_HISTORY.pattern,
                                 artifacts.SEGMENTER_CURVES.pattern)


CLASSIFIER = ClassifierHead()
SEGMENTER = SegmenterHead()


def training_setup(config):
    """What every training stage starts with, in this order: the seeds, the precision policy, the train split and
    the run's splits; returns (train split, splits, policy name)."""
    seed_everything(config.seed, config.deterministic)
    policy = configure_precision(config.mixed_precision)
    return load_split(config.data.root, "train"), artifacts.read_splits(config.run_dir), policy


@dataclass(frozen=True)
class TrainedHead:
    """A trained model, reloaded from its file, and what its training did (`training_facts`)."""

    model: keras.Model
    facts: dict


def train_head(config, head: Head, data, fit_positions: np.ndarray, validation_positions: np.ndarray, strategy,
               tag: str = "") -> TrainedHead:
    """Train `head` on `data` at `fit_positions` through its planned phases, keeping the epoch with the best
    validation `head.monitor` on `validation_positions`; saves its model, history and curves (`head.model_files`).

    Args:
        config: the run's configuration (the head's section, seed and data root are read).
        data: the train split (an ImageSet: ids, images, labels, masks).
        strategy: the distribution strategy the model is built under.
        tag: "" or a fold's "_fold<k>", in the file names.
    """
    settings = head.settings(config)
    return fit_head(config, head, data, fit_positions, validation_positions, plan_phases(settings), strategy,
                    head.model_files(config.run_dir, tag), tag, f"{head.name}{tag} ({head.describe(settings)})")


def refit_head(config, head: Head, data, positions: np.ndarray, phases: list[Phase], strategy) -> TrainedHead:
    """Train `head` again from its starting weights on `positions` (every labelled image) through `phases` (cut to
    the epochs validation chose, `training.refit_phases`), keeping the last epoch; saves `head.refit_files`."""
    settings = head.settings(config)
    return fit_head(config, head, data, positions, None, phases, strategy, head.refit_files(config.run_dir), "refit",
                    f"{head.name} refit on {len(positions)} images ({head.describe(settings)})")


def continue_head(config, head: Head, data, fit_positions: np.ndarray, validation_positions: np.ndarray,
                  phase: Phase, strategy, start_from: Path) -> TrainedHead:
    """Train `head` on from the model in `start_from` (self-training: fit + pseudo-labelled images at `fit_positions`)
    through `phase`, keeping the epoch with the best validation `head.monitor`; saves `head.self_trained_files`.
    Copy-paste stays off (`without_copy_paste`)."""
    settings = without_copy_paste(head.settings(config))
    return fit_head(config, head, data, fit_positions, validation_positions, [phase], strategy,
                    head.self_trained_files(config.run_dir), "self-trained",
                    f"{head.name} self-trained on {len(fit_positions)} images ({head.describe(settings)})", start_from,
                    settings)


def without_copy_paste(settings):
    """A head's settings with copy-paste off, for self-training. Copy-paste pastes a source's labelled pixels, void
    included: in a real mask void is a thin border, but in a pseudo mask it is every unsure pixel, objects the
    heads were unsure of among them, which would land unflagged on the fit images."""
    return replace(unwrapped(settings), copy_paste=0.0)


def fit_head(config, head: Head, data, fit_positions: np.ndarray, validation_positions: np.ndarray | None,
             phases: list[Phase], strategy, files: ModelFiles, tag: str, title: str,
             start_from: Path | None = None, settings=None) -> TrainedHead:
    """The steps `train_head`, `refit_head` and `continue_head` share. Without validation positions every epoch
    runs and the last is kept (nothing to choose an epoch by), and no metric but the loss is computed. With
    `start_from` the model is that saved model, trained on, instead of a new one; `settings` replaces the head's
    section of `config`."""
    settings = head.settings(config) if settings is None else settings
    with strategy.scope():
        model = head.build(settings) if start_from is None else keras.saving.load_model(start_from, compile=False)
    validated = validation_positions is not None
    on_features = head.trains_on_cached_features(settings)
    if on_features:
        # The encoder never changes: its features are computed once, and only the head part is fitted.
        encoder, trained = split_at_head(model, head.name)
        cached = cached_features(encoder, head.name, data, settings.image_size, settings.batch_size, config.run_dir)
        train_data = feature_dataset(cached, fit_positions, settings.batch_size, True, config.seed)
        validation_data = (feature_dataset(cached, validation_positions, settings.batch_size, False, config.seed)
                           if validated else None)
    else:
        trained = model
        train_data = head.dataset(settings, data, fit_positions, True, config.seed)
        validation_data = head.dataset(settings, data, validation_positions, False, config.seed) if validated else None
    # What an interrupted training must share with this one to be resumed.
    identity = {"seed": config.seed, head.name: training_settings(settings), "tag": tag, "cached_features": on_features,
                "phases": [asdict(phase) for phase in phases], "data": fingerprint(config.data.root, "train"),
                "fit_ids": np.asarray(data.ids)[fit_positions].tolist(),
                **({} if start_from is None else {"start_from": hash_file(start_from),
                                                  "targets": targets_digest(data, fit_positions),
                                                  "test_data": fingerprint(config.data.root, "test")})}

    def compile_model(model, learning_rate, phase):
        with strategy.scope():
            model.compile(optimizer=phase_optimizer(model, settings, phase, learning_rate), loss=head.loss(settings),
                          metrics=head.metrics(settings) if validated else [])

    # The history grows beside the checkpoint while training, so that an interruption keeps it for the resume;
    # only a finished training's history reaches the run folder.
    live_history = files.checkpoint.with_name(f"{files.checkpoint.stem}_history.csv")
    facts: list[dict] = []
    # Keras writes its checkpoints and backups in place: a full disk there is named like any other write.
    with reporting_full_disk(files.checkpoint.parent, "the earlier model files are as they were; an interrupted "
                             "training resumes from its last whole epoch"):
        fit_in_phases(trained, compile_model, phases, train_data, validation_data,
                      steps_per_epoch(len(fit_positions), settings.batch_size), files.checkpoint, live_history,
                      monitor=head.monitor if validated else None, mode="max", patience=settings.patience,
                      identity=identity, facts=facts)
    if on_features:
        keep_whole_model(model, files)
    else:
        promote_checkpoint(files.checkpoint, files.model)
    record_option_defaults(files.model)  # so that Kaggle's older Keras can load it (voc_pipeline.models.portable)
    history = pd.read_csv(live_history)
    write_history(history.to_dict("records"), files.history)
    live_history.unlink()
    plot_learning_curves(history, files.curves, title)
    return TrainedHead(keras.saving.load_model(files.model, compile=False),
                       training_facts(settings, facts, settings.patience if validated else None, on_features))


def targets_digest(data, positions: np.ndarray) -> str:
    """One hash of the flags and masks at `positions`: pseudo-labels change with the thresholds and the plan while
    the images stay, and a resumed self-training must have trained on the same ones."""
    digest = hashlib.sha256(np.ascontiguousarray(data.labels[positions]).tobytes())
    for position in positions:
        digest.update(np.ascontiguousarray(data.masks[position]).tobytes())
    return digest.hexdigest()


def draw_training_examples(config, head: Head, data, fit_positions: np.ndarray, count: int = 8) -> Path:
    """The first `count` training examples as `head` sees them (copy-paste included), drawn to its
    `augmented_examples` PNG: the classifier's with their flags, the segmenter's tinted by their masks."""
    settings = head.settings(config)
    examples = head.dataset(settings, data, fit_positions, True, config.seed).unbatch().take(count)
    images, label_maps, titles = [], [], []
    for image, target in examples.as_numpy_iterator():
        images.append(image)
        if head is SEGMENTER:
            label_maps.append(target)
            classes = [k for k in np.unique(target) if 0 < k <= NUM_CLASSES]
        else:
            label_maps.append(None)
            classes = [k + 1 for k in np.flatnonzero(target)]
        titles.append(", ".join(CLASS_NAMES[k - 1] for k in classes) or "background only")
    return plot_training_examples(images, label_maps, titles, head.augmented_examples.path(config.run_dir))


def keep_whole_model(model: keras.Model, files: ModelFiles) -> None:
    """After a head trained on cached features: the chosen epoch's head (its checkpoint) put into the whole model,
    which is saved as the model file (it takes raw images, as every saved model does)."""
    chosen = keras.saving.load_model(files.checkpoint, compile=False)
    for layer in chosen.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    whole = files.checkpoint.with_name(f"{files.checkpoint.stem}_whole.keras")
    model.save(whole)
    whole.replace(files.model)
    files.checkpoint.unlink()


def training_facts(settings, phases: list[dict], patience: int | None, cached: bool = False) -> dict:
    """What a training started from, what each phase trained and when it would stop early (None: it ran every
    epoch), as the training code decided it: the head manifests keep it, and the report states it from there."""
    row = backbone(settings.backbone)
    return {"backbone": settings.backbone, "weights": settings.weights, "pretrained": is_pretrained(settings.weights),
            "initial_weights": describe_initial_weights(settings.weights, row), "phases": phases,
            "fine_tuning_keeps_frozen": row.freezing_sentence, "early_stopping_patience": patience,
            "cached_features": cached}

