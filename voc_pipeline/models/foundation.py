"""Encoders from keras-hub: DINOv2 for both heads, SegFormer for the segmenter, and the heads on them.

keras-hub (the Keras team's model library) is imported only here and only when such a row of the backbone
table is built, so the rest of the package never needs it. An encoder's weights are its keras-hub preset:
a preset name (keras-hub downloads it where there is internet, or reads the copy a Kaggle kernel attaches
as a model source), the folder of a saved preset, or `none` for random weights with the preset's
architecture (the table's `architecture`). A ViT or MiT encoder takes one input size, fixed when it is
built: keras-hub interpolates DINOv2's position embeddings to that size.

The heads: for DINOv2, the classifier pools the class token with the mean of the patch tokens, and the
segmenter turns the patch tokens back into their grid (stride 14), normalises them and maps each to 21
logits with a 1x1 convolution, upsampled bilinearly to the input size. SegFormer keeps its own all-MLP
decoder (part of keras-hub's SegFormerBackbone) and ends, as keras-hub's SegFormerImageSegmenter does, in
dropout and a 1x1 convolution, here to 21 classes. Preprocessing sits inside every model, so a saved
model still takes raw uint8 RGB.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
from keras import layers, ops

from voc_pipeline.backbone_table import KERAS_HUB_VERSION, Backbone, backbone, is_pretrained, refuse_voc_trained
from voc_pipeline.errors import BackboneError, WeightsUnavailableError

KERAS_HUB_HELP = (f"keras-hub is not installed: `make install` installs it (pip install --no-deps "
                  f"keras-hub=={KERAS_HUB_VERSION} regex sentencepiece tokenizers kagglehub)")


def keras_hub():
    """The keras_hub module, or a BackboneError saying how to install it."""
    try:
        import keras_hub as module
    except ImportError:
        raise BackboneError(KERAS_HUB_HELP) from None
    return module


def preset_source(row: Backbone, weights: str) -> str | None:
    """What to load the encoder's weights from: a preset name or a local preset folder; None for random weights.

    Raises:
        BackboneError: VOC-trained weights (the course forbids them), or a path that is not a preset folder.
    """
    if not is_pretrained(weights):
        return None
    refuse_voc_trained(weights)
    path = Path(weights)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneError(f"{path} is not a keras-hub preset folder (it has no config.json): give a preset name "
                                f"such as {row.preset!r}, a folder written by save_to_preset, or none")
        return str(path)
    if "/" in weights or weights.endswith((".h5", ".keras")):
        raise BackboneError(f"{row.name}'s weights {weights!r}: no such preset folder; give a preset name such as "
                            f"{row.preset!r}, a preset folder, or none")
    return weights


def from_preset(cls, source: str, **overrides):
    """`cls.from_preset(source)`, turning a failed download into the message that names the options."""
    try:
        return cls.from_preset(source, **overrides)
    except (OSError, ValueError) as error:
        if Path(source).is_dir():
            raise
        raise WeightsUnavailableError(f"could not load the keras-hub preset {source!r}: {str(error).splitlines()[0][:200]}. "
                                      f"Choose one of: (1) internet access, so that keras-hub downloads it; (2) its "
                                      f"folder (a Kaggle kernel attaches it as a model source: `kernel build` does, or "
                                      f"save_to_preset wrote it), weights=<folder>; (3) weights=none (random weights, "
                                      f"much weaker)") from None


def build_dinov2(row: Backbone, image_size: int, weights: str) -> keras.Model:
    """A DINOv2 encoder for square `image_size` inputs: (B, S, S, 3) floats -> (B, 1 + registers + patches, D)."""
    hub = keras_hub()
    source = preset_source(row, weights)
    shape = (image_size, image_size, 3)
    if source is None:
        return hub.models.DINOV2Backbone(**row.architecture, image_shape=shape, name="backbone")
    return from_preset(hub.models.DINOV2Backbone, source, image_shape=shape, name="backbone")


def build_segformer(row: Backbone, image_size: int, weights: str) -> keras.Model:
    """SegFormer's encoder and all-MLP decoder for square `image_size` inputs: -> (B, S/4, S/4, projection)."""
    hub = keras_hub()
    source = preset_source(row, weights)
    shape = (image_size, image_size, 3)
    if source is None:
        architecture = dict(row.architecture)
        projection = architecture.pop("projection_filters")
        encoder = hub.models.MiTBackbone(**architecture, image_shape=shape)
        return hub.models.SegFormerBackbone(image_encoder=encoder, projection_filters=projection, name="backbone")
    # keras-hub cannot rebuild a SegFormer preset at another size through from_preset: its MiT encoder's size is
    # in the saved configuration, so that is set before the configuration is deserialized and the weights loaded.
    from keras_hub.src.utils.preset_utils import get_file

    try:
        configuration = json.loads(Path(get_file(source, "config.json")).read_text())
        weights_file = get_file(source, "model.weights.h5")
    except (OSError, ValueError) as error:
        raise WeightsUnavailableError(f"could not load the keras-hub preset {source!r}: {error}. Give its folder, "
                                      f"or weights=none") from None
    configuration["config"]["image_encoder"]["config"]["image_shape"] = list(shape)
    configuration["config"]["name"] = "backbone"
    decoder = keras.saving.deserialize_keras_object(configuration)
    decoder.load_weights(weights_file)
    return decoder


class TokenPooling(layers.Layer):
    """A ViT's class token next to the mean of its patch tokens: (B, 1 + R + N, D) -> (B, 2D)."""

    def __init__(self, first_patch: int, **kwargs):
        super().__init__(**kwargs)
        self.first_patch = first_patch

    def call(self, tokens):
        return ops.concatenate([tokens[:, 0], ops.mean(tokens[:, self.first_patch:], axis=1)], axis=-1)

    def get_config(self):
        return {**super().get_config(), "first_patch": self.first_patch}


class PatchGrid(layers.Layer):
    """A ViT's patch tokens back on their grid: (B, 1 + R + N, D) -> (B, g, g, D), g * g = N."""

    def __init__(self, first_patch: int, grid: int, **kwargs):
        super().__init__(**kwargs)
        self.first_patch, self.grid = first_patch, grid

    def call(self, tokens):
        return ops.reshape(tokens[:, self.first_patch:], (-1, self.grid, self.grid, ops.shape(tokens)[-1]))

    def get_config(self):
        return {**super().get_config(), "first_patch": self.first_patch, "grid": self.grid}


for custom in (TokenPooling, PatchGrid):
    keras.saving.register_keras_serializable(package="voc_pipeline")(custom)


def first_patch_token(encoder) -> int:
    """Where a DINOv2 encoder's patch tokens start: after the class token and its register tokens."""
    return 1 + int(getattr(encoder, "num_register_tokens", 0))


def encoder_features(name: str, image_size: int, weights: str, preprocess: layers.Layer):
    """(raw uint8 input, the encoder's output on it, the encoder) of a keras-hub row; the encoder is named "backbone"
    inside the model, as every backbone is, so that training finds it."""
    row = backbone(name)
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    if row.segmenter_head == "segformer":
        encoder = build_segformer(row, image_size, weights)
        return inputs, encoder(preprocess(inputs)), encoder
    encoder = build_dinov2(row, image_size, weights)
    return inputs, encoder({"images": preprocess(inputs)}), encoder


def build_token_classifier(name: str, image_size: int, num_classes: int, weights: str, dropout: float,
                           preprocess: layers.Layer) -> keras.Model:
    """A classifier on a DINOv2 encoder: class token and mean patch token, dropout, `num_classes` logits (float32)."""
    inputs, tokens, encoder = encoder_features(name, image_size, weights, preprocess)
    pooled = TokenPooling(first_patch_token(encoder), name="pool")(tokens)
    pooled = layers.Dropout(dropout, name="dropout")(pooled)
    logits = layers.Dense(num_classes, dtype="float32", name="logits")(pooled)
    return keras.Model(inputs, logits, name=f"classifier_{name}")


def build_token_segmenter(name: str, image_size: int, num_classes: int, weights: str,
                          preprocess: layers.Layer) -> keras.Model:
    """A segmenter on a DINOv2 encoder: the patch grid (stride 14), batch norm, a 1x1 convolution to `num_classes`
    logits, upsampled bilinearly to the input size (float32 logits, the input's height and width)."""
    from voc_pipeline.models.segmenter import BilinearUpsampling

    row = backbone(name)
    inputs, tokens, encoder = encoder_features(name, image_size, weights, preprocess)
    grid = PatchGrid(first_patch_token(encoder), image_size // row.size_multiple, name="patch_grid")(tokens)
    features = layers.BatchNormalization(name="head_bn")(grid)
    logits = layers.Conv2D(num_classes, 1, name="classifier_conv")(features)
    logits = BilinearUpsampling(row.size_multiple, name="upsample_to_input")(logits)
    logits = layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(inputs, logits, name=f"segmenter_{name}")


def build_segformer_segmenter(name: str, image_size: int, num_classes: int, weights: str,
                              preprocess: layers.Layer) -> keras.Model:
    """SegFormer with its decoder, dropout and a 1x1 convolution to `num_classes` logits at stride 4, upsampled
    bilinearly to the input size (float32)."""
    from voc_pipeline.models.segmenter import BilinearUpsampling

    inputs, decoded, _ = encoder_features(name, image_size, weights, preprocess)
    decoded = layers.Dropout(0.1, name="head_dropout")(decoded)
    logits = layers.Conv2D(num_classes, 1, name="classifier_conv")(decoded)
    logits = BilinearUpsampling(4, name="upsample_to_input")(logits)
    logits = layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(inputs, logits, name=f"segmenter_{name}")
