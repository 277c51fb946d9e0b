"""Losses: multi-label classification (sigmoid, never softmax) and segmentation with an ignore value."""

from __future__ import annotations

import keras
from keras import ops

CLASSIFIER_LOSSES = ("bce", "focal", "asymmetric")


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
    raise ValueError(f"unknown classifier loss {name!r}; expected one of: {', '.join(CLASSIFIER_LOSSES)}")
