"""The multi-label classifier: a backbone, global average pooling, dropout and 20 sigmoid logits."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from voc_pipeline.backbone_table import CLASSIFIER_BACKBONES
from voc_pipeline.backbone_table import backbone as table_row
from voc_pipeline.core.classes import NUM_CLASSES
from voc_pipeline.core.probability import sigmoid
from voc_pipeline.errors import BackboneError
from voc_pipeline.models.backbones import build_backbone, preprocessing_layer
from voc_pipeline.models.input_pipeline import prediction_dataset


def build_classifier(backbone: str = "mobilenet_v2", image_size: int = 224, *, num_classes: int = NUM_CLASSES,
                     weights: str = "imagenet", dropout: float = 0.2, width_multiplier: float = 1.0) -> keras.Model:
    """An uncompiled functional classifier from raw uint8 RGB (image_size square) to `num_classes` logits.

    The logits are float32 even under mixed precision. Multi-label: apply a sigmoid per class, never a
    softmax across classes.

    Args:
        backbone: one of voc_pipeline.backbones.BACKBONES.
        image_size: square input side in pixels.
        num_classes: number of independent class outputs.
        weights: "imagenet", "none" or the path of the backbone's no-top weights file.
        dropout: dropout rate before the last layer.
        width_multiplier: MobileNet alpha (1.0 for other backbones).
    """
    head = table_row(backbone).classifier_head
    if head is None:
        raise BackboneError(f"{backbone} carries no classifier head (it segments only); expected one of: "
                            f"{', '.join(CLASSIFIER_BACKBONES)}")
    if head == "tokens":
        from voc_pipeline.models.foundation import build_token_classifier

        return build_token_classifier(backbone, image_size, num_classes, weights, dropout, preprocessing_layer(backbone))
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    features = preprocessing_layer(backbone)(inputs)
    features = build_backbone(backbone, image_size, weights, width_multiplier)(features)
    pooled = layers.GlobalAveragePooling2D(name="pool")(features)
    pooled = layers.Dropout(dropout, name="dropout")(pooled)
    logits = layers.Dense(num_classes, dtype="float32", name="logits")(pooled)
    return keras.Model(inputs, logits, name=f"classifier_{backbone}")


def classifier_from_config(settings, weights: str | None = None) -> keras.Model:
    """`build_classifier` with every argument from a `classifier` configuration section, by keyword.

    Args:
        settings: the ClassifierConfig.
        weights: another weights option than the section's (benchmarks build with "none").
    """
    return build_classifier(settings.backbone, settings.image_size, num_classes=NUM_CLASSES,
                            weights=settings.weights if weights is None else weights, dropout=settings.dropout,
                            width_multiplier=settings.width_multiplier)


def predict_probabilities(models: Sequence[keras.Model], images: Sequence[np.ndarray], batch_size: int = 32,
                          flip_tta: bool = True) -> np.ndarray:
    """(N, C) class probabilities averaged over `models` (an ensemble of folds) and, with flip_tta, mirror images.

    Images of any size are resized to each model's input size in batches.
    """
    if not images:
        return np.zeros((0, models[0].output_shape[-1]))
    total = 0.0
    views = (False, True) if flip_tta else (False,)
    for model in models:
        image_size = model.input_shape[1]
        for flip in views:
            total = total + sigmoid(model.predict(prediction_dataset(images, image_size, batch_size, flip), verbose=0))
    return total / (len(models) * len(views))


def predict_plain_and_flip_tta(models: Sequence[keras.Model], images: Sequence[np.ndarray],
                               batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(plain, flip TTA) probabilities: the same values as predict_probabilities with flip_tta off and on, each
    view of each image predicted once instead of the plain view twice."""
    plain_total = both_total = 0.0
    for model in models:
        image_size = model.input_shape[1]
        plain = sigmoid(model.predict(prediction_dataset(images, image_size, batch_size, False), verbose=0))
        flipped = sigmoid(model.predict(prediction_dataset(images, image_size, batch_size, True), verbose=0))
        plain_total = plain_total + plain
        both_total = both_total + plain + flipped  # summed in predict_probabilities' order, so the bytes agree
    return plain_total / len(models), both_total / (2 * len(models))
