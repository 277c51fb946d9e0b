"""DeepLabV3+ on a keras.applications backbone, and per-pixel probabilities at each image's own size.

Model (Chen et al., 2018): atrous spatial pyramid pooling on the backbone's output-stride features
(a 1x1 branch, three 3x3 atrous branches, image-level pooling), a decoder that fuses the upsampled ASPP
output with low-level stride-4 features reduced to 48 channels, two 3x3 convolutions, and bilinear
upsampling of the class logits to the input size. The input may be any size that is a multiple of the
output stride, so one model predicts at several scales.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import cv2
import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from voc_pipeline.backbone_table import BACKBONES, SEGMENTER_BACKBONES
from voc_pipeline.choices import ATROUS_RATES
from voc_pipeline.core.classes import NUM_CLASSES
from voc_pipeline.errors import BackboneError
from voc_pipeline.models.backbones import build_backbone, preprocessing_layer, tapped_feature_map
from voc_pipeline.models.input_pipeline import letterbox_for_prediction

LOW_LEVEL_STRIDE = 4


@keras.saving.register_keras_serializable(package="voc_pipeline")
class SpreadOverFeatureMap(layers.Layer):
    """Repeats a 1 x 1 image-level feature at every position of a reference feature map, whatever its size
    (ASPP's image-pooling branch; a bilinear upsampling of a 1 x 1 map gives the same values)."""

    def call(self, inputs):
        pooled, reference = inputs
        return pooled + ops.cast(ops.zeros_like(reference[..., :1]), pooled.dtype)


@keras.saving.register_keras_serializable(package="voc_pipeline")
class BilinearUpsampling(layers.Layer):
    """Bilinear upsampling by an integer factor for inputs of any height and width (Keras's UpSampling2D
    needs them known; this gives the same values: both are tf.image.resize)."""

    def __init__(self, factor: int, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        shape = tf.shape(inputs)
        resized = tf.image.resize(inputs, (shape[1] * self.factor, shape[2] * self.factor), method="bilinear")
        return tf.cast(resized, inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def conv_bn_relu(features, filters: int, kernel_size: int, name: str, dilation_rate: int = 1):
    """Convolution (no bias), batch norm and ReLU: the unit every DeepLab branch is made of."""
    features = layers.Conv2D(filters, kernel_size, padding="same", dilation_rate=dilation_rate, use_bias=False,
                             name=f"{name}_conv")(features)
    features = layers.BatchNormalization(name=f"{name}_bn")(features)
    return layers.ReLU(name=f"{name}_relu")(features)


def atrous_spatial_pyramid_pooling(features, filters: int, rates: tuple[int, int, int]):
    """ASPP: a 1x1 branch, three 3x3 atrous branches and image-level pooling, fused by a 1x1 convolution."""
    branches = [conv_bn_relu(features, filters, 1, "aspp_1x1")]
    for rate in rates:
        branches.append(conv_bn_relu(features, filters, 3, f"aspp_rate{rate}", dilation_rate=rate))
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_image_pool")(features)
    pooled = conv_bn_relu(pooled, filters, 1, "aspp_image")
    branches.append(SpreadOverFeatureMap(name="aspp_image_spread")([pooled, features]))
    fused = layers.Concatenate(name="aspp_concat")(branches)
    fused = conv_bn_relu(fused, filters, 1, "aspp_project")
    return layers.Dropout(0.1, name="aspp_dropout")(fused)


def build_segmenter(backbone: str = "mobilenet", image_size: int = 320, *, num_classes: int = NUM_CLASSES + 1,
                    output_stride: int = 16, weights: str = "imagenet", width_multiplier: float = 1.0,
                    aspp_filters: int = 256, decoder_filters: int = 256) -> keras.Model:
    """An uncompiled DeepLabV3+ from raw uint8 RGB to float32 logits of the same height and width.

    Args:
        backbone: one of SEGMENTER_BACKBONES (their stride-4 and output-stride taps are in the backbone table).
        image_size: the nominal (training) square side; must be divisible by output_stride. The model
            accepts any height and width divisible by output_stride.
        num_classes: 21 for VOC (background and the 20 classes).
        output_stride: 16 or 8: input size over the size of the features ASPP sees.
        weights: "imagenet", "none" or the path of the backbone's no-top weights file.
        width_multiplier: MobileNet alpha (1.0 for the others).
        aspp_filters, decoder_filters: channels of the ASPP branches and of the decoder convolutions.

    Raises:
        BackboneError: unknown backbone, unsupported output stride, or an image size it does not divide.
    """
    if backbone not in SEGMENTER_BACKBONES:
        raise BackboneError(f"unknown segmenter backbone {backbone!r}; expected one of: {', '.join(SEGMENTER_BACKBONES)}")
    head = BACKBONES[backbone].segmenter_head
    if head in ("tokens", "segformer"):
        from voc_pipeline.models import foundation

        build = foundation.build_token_segmenter if head == "tokens" else foundation.build_segformer_segmenter
        return build(backbone, image_size, num_classes, weights, preprocessing_layer(backbone))
    if output_stride not in ATROUS_RATES:
        raise BackboneError(f"output stride must be one of {sorted(ATROUS_RATES)}, got {output_stride}")
    if image_size % output_stride:
        raise BackboneError(f"image size {image_size} is not divisible by the output stride {output_stride}; "
                            f"use a multiple of {output_stride} (e.g. {image_size // output_stride * output_stride or output_stride})")
    taps = BACKBONES[backbone].taps
    inputs = keras.Input((None, None, 3), dtype="uint8", name="image")
    network = build_backbone(backbone, image_size, weights, width_multiplier, pretrained_size_only=False, any_size=True)
    extractor = keras.Model(network.input, [tapped_feature_map(network, taps[LOW_LEVEL_STRIDE]),
                                            tapped_feature_map(network, taps[output_stride])], name="backbone")
    low_level, high_level = extractor(preprocessing_layer(backbone)(inputs))

    context = atrous_spatial_pyramid_pooling(high_level, aspp_filters, ATROUS_RATES[output_stride])
    context = BilinearUpsampling(output_stride // LOW_LEVEL_STRIDE, name="decoder_upsample")(context)
    low_level = conv_bn_relu(low_level, 48, 1, "decoder_low_level")
    decoded = layers.Concatenate(name="decoder_concat")([context, low_level])
    decoded = conv_bn_relu(decoded, decoder_filters, 3, "decoder_conv1")
    decoded = conv_bn_relu(decoded, decoder_filters, 3, "decoder_conv2")
    logits = layers.Conv2D(num_classes, 1, name="classifier_conv")(decoded)
    logits = BilinearUpsampling(LOW_LEVEL_STRIDE, name="upsample_to_input")(logits)
    logits = layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(inputs, logits, name=f"deeplabv3plus_{backbone}")


def segmenter_from_config(settings, weights: str | None = None) -> keras.Model:
    """`build_segmenter` with every argument from a `segmenter` configuration section, by keyword (so that
    the adjacent integers aspp_filters and decoder_filters cannot be swapped).

    Args:
        settings: the SegmenterConfig.
        weights: another weights option than the section's (benchmarks build with "none").
    """
    return build_segmenter(settings.backbone, settings.image_size, num_classes=NUM_CLASSES + 1,
                           output_stride=settings.output_stride,
                           weights=settings.weights if weights is None else weights,
                           width_multiplier=settings.width_multiplier, aspp_filters=settings.aspp_filters,
                           decoder_filters=settings.decoder_filters)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    shifted = logits - logits.max(-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(-1, keepdims=True)


def scaled_canvas(image_size: int, scale: float, output_stride: int) -> int:
    """The square side for predicting at `scale`: image_size times scale, to the nearest multiple of the stride."""
    return max(output_stride, int(round(image_size * scale / output_stride)) * output_stride)


def prediction_canvas(model: keras.Model, image_size: int, scale: float, output_stride: int) -> int:
    """The square side a batch is letterboxed into at `scale`: the model's own input size where it takes one only
    (keras-hub's ViT and MiT encoders, which predict at scale 1 only), else `scaled_canvas`.

    Raises:
        BackboneError: another scale than 1 for a model of one fixed size.
    """
    fixed = model.input_shape[1]
    if fixed is None:
        return scaled_canvas(image_size, scale, output_stride)
    if scale != 1.0:
        raise BackboneError(f"{model.name} takes {fixed} x {fixed} inputs only: it cannot predict at scale {scale:g}")
    return int(fixed)


def resize_probabilities(probabilities: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an (h, w, C) probability map to (height, width, C)."""
    if probabilities.shape[:2] == (height, width):
        return probabilities
    # OpenCV resizes at most 512 channels at once and any count below that; 21 is fine.
    return cv2.resize(probabilities, (width, height), interpolation=cv2.INTER_LINEAR).reshape(height, width, -1)


def view_probabilities(model: keras.Model, batch: np.ndarray, flip: bool) -> np.ndarray:
    """(B, S, S, C) softmax probabilities of a letterboxed batch, or of its mirror image mirrored back."""
    view = np.ascontiguousarray(batch[:, :, ::-1]) if flip else batch
    probabilities = softmax(np.asarray(model.predict_on_batch(view), dtype=np.float32))
    return probabilities[:, :, ::-1] if flip else probabilities


def canvas_probabilities(model: keras.Model, batch: np.ndarray, flip_tta: bool) -> np.ndarray:
    """(B, S, S, C) softmax probabilities of a letterboxed batch, averaged with its mirror image when flip_tta."""
    views = (False, True) if flip_tta else (False,)
    total = 0.0
    for flip in views:
        total = total + view_probabilities(model, batch, flip)
    return total / len(views)


def label_maps_with_and_without_flip(model: keras.Model, images: Sequence[np.ndarray], image_size: int,
                                     output_stride: int, batch_size: int = 8) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(label maps with flip TTA, label maps without) at scale 1, each batch predicted once plain and once
    mirrored: the same maps as predict_label_maps with flip_tta on and off, for half the predictions."""
    with_flip, without_flip = [], []
    canvas = prediction_canvas(model, image_size, 1.0, output_stride)
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        letterboxed = [letterbox_for_prediction(image, canvas) for image in chunk]
        batch = np.stack([boxed.numpy() for boxed, _, _ in letterboxed])
        plain = view_probabilities(model, batch, flip=False)
        averaged = (plain + view_probabilities(model, batch, flip=True)) / 2
        for position, (image, (_, height, width)) in enumerate(zip(chunk, letterboxed)):
            for probabilities, maps in ((averaged, with_flip), (plain, without_flip)):
                valid = np.ascontiguousarray(probabilities[position, :int(height), :int(width)])
                maps.append(resize_probabilities(valid, *image.shape[:2]).argmax(-1).astype(np.uint8))
    return with_flip, without_flip


def probability_maps(model: keras.Model, images: Sequence[np.ndarray], image_size: int, output_stride: int,
                     batch_size: int = 8, flip_tta: bool = True,
                     scales: Sequence[float] = (1.0,)) -> Iterator[np.ndarray]:
    """For each image, in order, its (H, W, C) float32 probability map at its own size, averaged over `scales`.

    At each scale a batch is letterboxed (long side to image_size times the scale, padded to a square that
    is a multiple of the output stride) and predicted, averaged over the mirror image with flip_tta; the
    valid (unpadded) region is resized bilinearly to the original size. Memory is bounded by one batch.
    """
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        per_scale = []
        for scale in scales:
            canvas = prediction_canvas(model, image_size, scale, output_stride)
            letterboxed = [letterbox_for_prediction(image, canvas) for image in chunk]
            batch = np.stack([boxed.numpy() for boxed, _, _ in letterboxed])
            per_scale.append((canvas_probabilities(model, batch, flip_tta),
                              [(int(height), int(width)) for _, height, width in letterboxed]))
        for position, image in enumerate(chunk):
            yield sum(resize_probabilities(np.ascontiguousarray(probabilities[position, :valid[position][0], :valid[position][1]]),
                                           *image.shape[:2]) for probabilities, valid in per_scale) / len(per_scale)


def predict_label_maps(model: keras.Model, images: Sequence[np.ndarray], image_size: int, output_stride: int,
                       batch_size: int = 8, flip_tta: bool = True, scales: Sequence[float] = (1.0,)) -> list[np.ndarray]:
    """One uint8 label map (values 0..20) per image, at its own size: the argmax of the probabilities
    averaged over the scales."""
    return [probabilities.argmax(-1).astype(np.uint8)
            for probabilities in probability_maps(model, images, image_size, output_stride, batch_size, flip_tta, scales)]
