"""Backbones shared by the classifier and the segmenter: construction, weights and preprocessing.

What each backbone is, is a row of `voc_pipeline.backbone_table`; this module turns a row into a Keras
model. Every backbone comes from `keras.applications` (or is the small from-scratch CNN) without its top.
Weights are `imagenet` (downloaded by Keras), `none` (random initialisation) or the path of a weights
file (how Kaggle users without internet attach them). The preprocessing a backbone expects is a layer
placed in front of it inside the model, so a saved model takes raw uint8 RGB.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import keras
from keras import layers

from voc_pipeline.backbone_table import INPUT_TAP, backbone
from voc_pipeline.errors import BackboneError, WeightsUnavailableError

WEIGHTS_HELP = (
    "Choose one of the three weight options: (1) weights=imagenet with internet access (Keras downloads "
    "the file into ~/.keras/models/, or copy it there beforehand); (2) weights=<path to the backbone's "
    "no-top .h5 weights file>, e.g. a file attached to a Kaggle notebook as a dataset under /kaggle/input/; "
    "(3) weights=none to train from random initialisation (no download, much weaker)."
)


@keras.saving.register_keras_serializable(package="voc_pipeline")
class CaffePreprocessing(layers.Layer):
    """RGB uint8 to the 'caffe' input of VGG16: BGR channel order minus the ImageNet channel means."""

    IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)

    def call(self, inputs):
        bgr = keras.ops.flip(keras.ops.cast(inputs, self.compute_dtype), axis=-1)
        return bgr - keras.ops.convert_to_tensor(self.IMAGENET_BGR_MEAN, dtype=self.compute_dtype)


def simple_cnn(include_top: bool = False, weights=None, input_shape=(224, 224, 3), **_) -> keras.Model:
    """A small from-scratch CNN (four conv-BN-ReLU blocks): the baseline users compare against."""
    if weights is not None:
        raise BackboneError("simple_cnn has no pretrained weights; use weights=none")
    inputs = keras.Input(input_shape)
    features = inputs
    for block, filters in enumerate((32, 64, 128, 256), start=1):
        for repeat in (1, 2):
            features = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv{repeat}")(features)
            features = layers.BatchNormalization(name=f"block{block}_bn{repeat}")(features)
            features = layers.ReLU(name=f"block{block}_relu{repeat}")(features)
        features = layers.MaxPooling2D(name=f"block{block}_pool")(features)
    return keras.Model(inputs, features, name="simple_cnn")


def constructor_of(name: str) -> Callable[..., keras.Model]:
    """The function the backbone table names for `name` ("module.function"), imported."""
    module, _, function = backbone(name).constructor.rpartition(".")
    return getattr(importlib.import_module(module), function)


def resolve_weights(weights: str) -> str | None:
    """'imagenet' -> 'imagenet', 'none' -> None, anything else must be an existing weights file."""
    if weights == "imagenet":
        return "imagenet"
    if weights.lower() == "none":
        return None
    path = Path(weights)
    if not path.is_file():
        raise BackboneError(f"weights file {path} does not exist. {WEIGHTS_HELP}")
    return str(path)


def check_image_size(name: str, image_size: int, weights: str | None, pretrained_size_only: bool = True) -> None:
    """Raise a BackboneError naming the supported sizes when `image_size` does not fit the backbone.

    With `pretrained_size_only` false (dense prediction), ImageNet weights of a MobileNet are accepted at
    any size: its convolutions do not depend on the input size, and Keras then loads the 224 px weights.
    """
    row = backbone(name)
    if image_size < row.min_size:
        raise BackboneError(f"{name} needs an image size of at least {row.min_size}, got {image_size}")
    if pretrained_size_only and weights == "imagenet" and row.imagenet_sizes and image_size not in row.imagenet_sizes:
        raise BackboneError(f"{name} has ImageNet weights for image sizes {', '.join(map(str, row.imagenet_sizes))}, "
                            f"got {image_size}; pick one of those or use weights=none")


def build_backbone(name: str, image_size: int, weights: str = "imagenet", width_multiplier: float = 1.0,
                   pretrained_size_only: bool = True, any_size: bool = False) -> keras.Model:
    """The headless backbone as a keras.Model named 'backbone', taking preprocessed float input.

    With `any_size`, the input's height and width are left open (dense prediction at several scales);
    `image_size` then only checks the nominal size.

    Raises:
        BackboneError: unknown name, unsupported size or missing weights file.
        WeightsUnavailableError: the ImageNet download failed; the message names the three options.
    """
    row = backbone(name)
    resolved = resolve_weights(weights)
    check_image_size(name, image_size, resolved, pretrained_size_only)
    side = None if any_size else image_size
    arguments = dict(include_top=False, weights=resolved, input_shape=(side, side, 3), **row.extra_arguments)
    if row.has_width_multiplier:
        arguments["alpha"] = width_multiplier
    elif width_multiplier != 1.0:
        raise BackboneError(f"{name} has no width multiplier; leave it at 1.0")
    try:
        network = constructor_of(name)(**arguments)
    except Exception as error:  # Keras raises a bare Exception for a failed download.
        if resolved == "imagenet" and ("URL fetch failure" in str(error) or isinstance(error, OSError)):
            raise WeightsUnavailableError(f"could not download ImageNet weights for {name}: {error}. {WEIGHTS_HELP}") from None
        raise
    # A stable name, so the training stage can find the backbone inside the model.
    return keras.Model(network.input, network.output, name="backbone")


def tapped_feature_map(network: keras.Model, tap: str):
    """The feature map a tap of the backbone table names: the named layer's output, or its input for a name
    ending in "/input" (voc_pipeline.backbone_table.INPUT_TAP)."""
    if tap.endswith(INPUT_TAP):
        return network.get_layer(tap.removesuffix(INPUT_TAP)).input
    return network.get_layer(tap).output


def stage_of_each_layer(network: keras.Model, name: str) -> dict[str, int]:
    """The stage (0 = the stem's) of each layer of a built backbone `name`, cut at its taps in stride order.

    A layer belongs to the stage whose tap is the first at or after it (so the stride-4 tap closes stage 0);
    layers past the last tap form one more stage. A backbone without taps has no stages here.

    Raises:
        BackboneError: the backbone table names no taps for `name`.
    """
    taps = backbone(name).taps
    if not taps:
        raise BackboneError(f"{name} has no stages in the backbone table (voc_pipeline.backbone_table names no "
                            f"taps for it); layer-wise learning-rate decay needs them: leave layerwise_lr_decay at 1.0")
    names = [layer.name for layer in network.layers]
    position = {layer_name: index for index, layer_name in enumerate(names)}
    starts = []  # where each stage after the first begins
    for stride in sorted(taps):
        tap = taps[stride]
        if tap.endswith(INPUT_TAP):
            starts.append(position.get(tap.removesuffix(INPUT_TAP), len(names)))
        else:
            starts.append(position[tap] + 1 if tap in position else len(names))
    return {layer_name: sum(index >= start for start in starts) for index, layer_name in enumerate(names)}


def preprocessing_layer(name: str) -> layers.Layer:
    """The layer that maps raw uint8 RGB to what the backbone expects (it also casts to float)."""
    kind = backbone(name).preprocessing
    if kind == "tf":
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")
    if kind == "caffe":
        return CaffePreprocessing(name="preprocess")
    if kind == "unit":
        return layers.Rescaling(1.0 / 255.0, name="preprocess")
    if kind == "imagenet_standardize":  # (x / 255 - mean) / deviation per channel, as keras-hub's presets expect
        return layers.Rescaling([1.0 / (255.0 * deviation) for deviation in IMAGENET_DEVIATION],
                                offset=[-mean / deviation for mean, deviation in zip(IMAGENET_MEAN, IMAGENET_DEVIATION)],
                                name="preprocess")
    return layers.Rescaling(1.0, name="preprocess")


# ImageNet's channel means and standard deviations on 0..1 RGB, the normalisation DINOv2 and SegFormer were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEVIATION = (0.229, 0.224, 0.225)
