"""DeepLabV3+ on a MobileNet backbone, and prediction of label maps at each image's own size.

Model (Chen et al., 2018): atrous spatial pyramid pooling on the backbone's output-stride features
(a 1x1 branch, three 3x3 atrous branches, image-level pooling), a decoder that fuses the upsampled ASPP
output with low-level stride-4 features reduced to 48 channels, two 3x3 convolutions, and bilinear
upsampling of the class logits to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import keras
import numpy as np
from keras import layers

from voc_pipeline.core.classes import NUM_CLASSES
from voc_pipeline.errors import BackboneError
from voc_pipeline.models.backbones import backbone_spec, build_backbone, preprocessing_layer
from voc_pipeline.models.input_pipeline import letterbox_for_prediction

SEGMENTER_BACKBONES = ("mobilenet", "mobilenet_v2")
ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
LOW_LEVEL_STRIDE = 4


def conv_bn_relu(features, filters: int, kernel_size: int, name: str, dilation_rate: int = 1):
    """Convolution (no bias), batch norm and ReLU: the unit every DeepLab branch is made of."""
    features = layers.Conv2D(filters, kernel_size, padding="same", dilation_rate=dilation_rate, use_bias=False,
                             name=f"{name}_conv")(features)
    features = layers.BatchNormalization(name=f"{name}_bn")(features)
    return layers.ReLU(name=f"{name}_relu")(features)


def atrous_spatial_pyramid_pooling(features, filters: int, rates: tuple[int, int, int], feature_size: int):
    """ASPP: a 1x1 branch, three 3x3 atrous branches and image-level pooling, fused by a 1x1 convolution."""
    branches = [conv_bn_relu(features, filters, 1, "aspp_1x1")]
    for rate in rates:
        branches.append(conv_bn_relu(features, filters, 3, f"aspp_rate{rate}", dilation_rate=rate))
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_image_pool")(features)
    pooled = conv_bn_relu(pooled, filters, 1, "aspp_image")
    branches.append(layers.UpSampling2D(feature_size, interpolation="bilinear", name="aspp_image_upsample")(pooled))
    fused = layers.Concatenate(name="aspp_concat")(branches)
    fused = conv_bn_relu(fused, filters, 1, "aspp_project")
    return layers.Dropout(0.1, name="aspp_dropout")(fused)


def build_segmenter(backbone: str = "mobilenet", image_size: int = 320, num_classes: int = NUM_CLASSES + 1,
                    output_stride: int = 16, weights: str = "imagenet", width_multiplier: float = 1.0,
                    aspp_filters: int = 256, decoder_filters: int = 256) -> keras.Model:
    """An uncompiled DeepLabV3+ from raw uint8 RGB (image_size square) to float32 logits (image_size, image_size, num_classes).

    Args:
        backbone: "mobilenet" (MobileNet v1) or "mobilenet_v2".
        image_size: square input side; must be divisible by output_stride.
        num_classes: 21 for VOC (background and the 20 classes).
        output_stride: 16 or 8: input size over the size of the features ASPP sees.
        weights: "imagenet", "none" or the path of the backbone's no-top weights file.
        width_multiplier: MobileNet alpha.
        aspp_filters, decoder_filters: channels of the ASPP branches and of the decoder convolutions.

    Raises:
        BackboneError: unknown backbone, unsupported output stride, or an image size it does not divide.
    """
    if backbone not in SEGMENTER_BACKBONES:
        raise BackboneError(f"unknown segmenter backbone {backbone!r}; expected one of: {', '.join(SEGMENTER_BACKBONES)}")
    if output_stride not in ATROUS_RATES:
        raise BackboneError(f"output stride must be one of {sorted(ATROUS_RATES)}, got {output_stride}")
    if image_size % output_stride:
        raise BackboneError(f"image size {image_size} is not divisible by the output stride {output_stride}; "
                            f"use a multiple of {output_stride} (e.g. {image_size // output_stride * output_stride or output_stride})")
    spec = backbone_spec(backbone)
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    network = build_backbone(backbone, image_size, weights, width_multiplier, pretrained_size_only=False)
    extractor = keras.Model(network.input, [network.get_layer(spec.taps[LOW_LEVEL_STRIDE]).output,
                                            network.get_layer(spec.taps[output_stride]).output], name="backbone")
    low_level, high_level = extractor(preprocessing_layer(backbone)(inputs))

    context = atrous_spatial_pyramid_pooling(high_level, aspp_filters, ATROUS_RATES[output_stride], image_size // output_stride)
    context = layers.UpSampling2D(output_stride // LOW_LEVEL_STRIDE, interpolation="bilinear", name="decoder_upsample")(context)
    low_level = conv_bn_relu(low_level, 48, 1, "decoder_low_level")
    decoded = layers.Concatenate(name="decoder_concat")([context, low_level])
    decoded = conv_bn_relu(decoded, decoder_filters, 3, "decoder_conv1")
    decoded = conv_bn_relu(decoded, decoder_filters, 3, "decoder_conv2")
    logits = layers.Conv2D(num_classes, 1, name="classifier_conv")(decoded)
    logits = layers.UpSampling2D(LOW_LEVEL_STRIDE, interpolation="bilinear", name="upsample_to_input")(logits)
    logits = layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(inputs, logits, name=f"deeplabv3plus_{backbone}")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    shifted = logits - logits.max(-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(-1, keepdims=True)


def predict_label_maps(models: Sequence[keras.Model], images: Sequence[np.ndarray], batch_size: int = 8,
                       flip_tta: bool = True) -> list[np.ndarray]:
    """One uint8 label map (values 0..20) per image, at that image's own height and width.

    Each batch is letterboxed to the model's input size; class probabilities are averaged over the models
    and, with flip_tta, over the mirror image; the valid (unpadded) region is then resized bilinearly to
    the original size and only then reduced by argmax. Memory is bounded by one batch.
    """
    image_size = models[0].input_shape[1]
    views = (False, True) if flip_tta else (False,)
    label_maps = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        letterboxed = [letterbox_for_prediction(image, image_size) for image in chunk]
        batch = np.stack([boxed.numpy() for boxed, _, _ in letterboxed])
        probabilities = 0.0
        for model in models:
            for flip in views:
                view = np.ascontiguousarray(batch[:, :, ::-1]) if flip else batch
                view_probabilities = softmax(np.asarray(model.predict_on_batch(view), dtype=np.float32))
                probabilities = probabilities + (view_probabilities[:, :, ::-1] if flip else view_probabilities)
        for image, image_probabilities, (_, valid_height, valid_width) in zip(chunk, probabilities, letterboxed):
            valid = np.ascontiguousarray(image_probabilities[:int(valid_height), :int(valid_width)])
            label_maps.append(resize_probabilities(valid, *image.shape[:2]).argmax(-1).astype(np.uint8))
    return label_maps


def resize_probabilities(probabilities: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an (h, w, C) probability map to (height, width, C)."""
    if probabilities.shape[:2] == (height, width):
        return probabilities
    # OpenCV resizes at most 512 channels at once and any count below that; 21 is fine.
    return cv2.resize(probabilities, (width, height), interpolation=cv2.INTER_LINEAR).reshape(height, width, -1)
