"""Losses: multi-label classification (sigmoid, never softmax) and segmentation with an ignore value."""

from __future__ import annotations

import keras
from keras import ops

from voc_pipeline.choices import CLASSIFIER_LOSSES
from voc_pipeline.core.presence import PRESENCE_POWER
from voc_pipeline.errors import ConfigError


@keras.saving.register_keras_serializable(package="voc_pipeline")
class AsymmetricLoss(keras.losses.Loss):
    """Asymmetric loss for multi-label classification (Ridnik et al., 2021), from logits.

    Negatives, which outnumber positives about 19 to 1 here, are down-weighted by a focusing power
    `gamma_negative` and their probability is shifted down by `clip` so that easy negatives contribute
    nothing; positives keep (nearly) plain cross-entropy.
    """

    def __init__(self, gamma_negative: float = 4.0, gamma_positive: float = 0.0, clip: float = 0.05,
                 name: str = "asymmetric_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.gamma_negative = gamma_negative
        self.gamma_positive = gamma_positive
        self.clip = clip

    def call(self, y_true, y_pred):
        targets = ops.cast(y_true, "float32")
        probabilities = ops.sigmoid(ops.cast(y_pred, "float32"))
        epsilon = 1e-7
        shifted = ops.clip(probabilities - self.clip, 0.0, 1.0)
        positive = targets * ops.power(1.0 - probabilities, self.gamma_positive) * ops.log(ops.maximum(probabilities, epsilon))
        negative = (1.0 - targets) * ops.power(shifted, self.gamma_negative) * ops.log(ops.maximum(1.0 - shifted, epsilon))
        return -ops.mean(positive + negative, axis=-1)

    def get_config(self):
        return {**super().get_config(), "gamma_negative": self.gamma_negative,
                "gamma_positive": self.gamma_positive, "clip": self.clip}


def classifier_loss(name: str) -> keras.losses.Loss:
    """The classification loss by name; all take logits."""
    if name == "bce":
        return keras.losses.BinaryCrossentropy(from_logits=True)
    if name == "focal":
        return keras.losses.BinaryFocalCrossentropy(from_logits=True, gamma=2.0)
    if name == "asymmetric":
        return AsymmetricLoss()
    raise ConfigError(f"unknown classifier loss {name!r}; expected one of: {', '.join(CLASSIFIER_LOSSES)}")


@keras.saving.register_keras_serializable(package="voc_pipeline")
class SegmentationLoss(keras.losses.Loss):
    """Pixel cross-entropy from logits that skips `ignore_label` pixels, plus an optional soft Dice term.

    The cross-entropy is averaged over the pixels that are not ignored (padding, and VOC's void borders
    when the data keeps them), so ignored pixels change neither the loss nor its gradient. The Dice term
    (weight `dice_weight`) is one minus the soft Dice of the foreground classes over the batch, which
    pushes directly on the competition's segmentation score. The presence term (weight `presence_weight`) is
    the binary cross-entropy of each image's class presences (core.presence: the pixel probabilities of each
    class pooled by a log-sum-exp) against the classes its mask holds: the masks teach the segmenter which
    classes an image holds, and `tune` may take its flags from those presences.
    """

    def __init__(self, num_classes: int, ignore_label: int = 255, dice_weight: float = 0.0,
                 presence_weight: float = 0.0, name: str = "segmentation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.dice_weight = dice_weight
        self.presence_weight = presence_weight

    def call(self, y_true, y_pred):
        labels = ops.cast(y_true, "int32")
        logits = ops.cast(y_pred, "float32")
        valid = ops.cast(ops.not_equal(labels, self.ignore_label), "float32")
        safe_labels = ops.where(ops.equal(labels, self.ignore_label), 0, labels)
        pixel_losses = ops.sparse_categorical_crossentropy(safe_labels, logits, from_logits=True) * valid
        loss = ops.sum(pixel_losses) / ops.maximum(ops.sum(valid), 1.0)
        if self.dice_weight:
            probabilities = ops.softmax(logits, axis=-1)[..., 1:] * valid[..., None]
            targets = ops.one_hot(safe_labels, self.num_classes)[..., 1:] * valid[..., None]
            intersection = ops.sum(probabilities * targets)
            dice = (2.0 * intersection + 1.0) / (ops.sum(probabilities) + ops.sum(targets) + 1.0)
            loss = loss + self.dice_weight * (1.0 - dice)
        if self.presence_weight:
            loss = loss + self.presence_weight * presence_cross_entropy(logits, safe_labels, valid, self.num_classes)
        # One value per batch: Keras's reduction then leaves it unchanged.
        return ops.broadcast_to(loss, ops.shape(labels)[:1])

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_label": self.ignore_label,
                "dice_weight": self.dice_weight, "presence_weight": self.presence_weight}


def presence_log_scores(logits, power: float = PRESENCE_POWER):
    """(batch, classes - 1) log presence of each foreground class: the log power mean of its pixel probabilities,
    as core.presence.presence_scores computes it in NumPy."""
    log_probabilities = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)[..., 1:]
    pixels = ops.cast(ops.shape(log_probabilities)[1] * ops.shape(log_probabilities)[2], "float32")
    pooled = ops.logsumexp(power * log_probabilities, axis=(1, 2))
    return ops.minimum((pooled - ops.log(pixels)) / power, 0.0)


def presence_cross_entropy(logits, labels, valid, num_classes: int):
    """The mean binary cross-entropy of the presences (from `logits`) against the classes each image's `labels`
    hold among its `valid` pixels."""
    present = ops.max(ops.one_hot(labels, num_classes)[..., 1:] * valid[..., None], axis=(1, 2))
    log_presence = presence_log_scores(logits)
    # log(1 - presence), kept finite where the presence rounds to 1.
    log_absence = ops.log(ops.maximum(1.0 - ops.exp(log_presence), 1e-7))
    return -ops.mean(present * log_presence + (1.0 - present) * log_absence)
