"""The backbone table: one row per backbone, and nothing here imports Keras or TensorFlow.

A row says how to build a backbone (its constructor, named as a string and resolved in
`voc_pipeline.models.backbones`), how to feed it, where the segmenter taps it, how it normalises and so
what fine-tuning keeps frozen, and what its pretrained weights were trained on. The configuration checks
backbone names against this table, the training code decides what to freeze from it, and the report
states its facts from it. Adding a `keras.applications` backbone is one row; another kind of model also
needs its builder in `voc_pipeline.models.backbones`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from voc_pipeline.errors import BackboneError

# A tap ending in INPUT_TAP ("<layer>/input") takes that layer's input rather than its output (Keras never
# puts a "/" in a layer name).
INPUT_TAP = "/input"

# What fine-tuning keeps frozen in the unfrozen share of a backbone, by its normalisation family: the Keras
# layer classes, and the sentence the report and the log say it with.
FROZEN_WHEN_FINE_TUNING: dict[str, tuple[str, ...]] = {"batch": ("BatchNormalization",), "layer": (), "none": ()}
FREEZING_SENTENCES = {
    "batch": "batch norm stays frozen, so that small batches do not overwrite its ImageNet statistics",
    "layer": "its layer norm trains with the layers around it (layer norm keeps no batch statistics to protect)",
    "none": "it has no normalization layers, so nothing beyond the lower layers stays frozen",
}


@dataclass(frozen=True)
class Backbone:
    """One row of the backbone table.

    Attributes:
        name: the configuration's name for it (`classifier.backbone`, `segmenter.backbone`).
        constructor: "module.function" building it headless (include_top, weights, input_shape, ...).
        preprocessing: what the layer in front of it maps raw uint8 RGB to: "tf" (-1..1), "caffe" (BGR minus
            the ImageNet means), "unit" (0..1) or "raw" (0..255; the backbone preprocesses itself).
        normalization: "batch", "layer" or "none": decides what fine-tuning keeps frozen (FROZEN_WHEN_FINE_TUNING).
        taps: layer names of the feature maps at output strides 4, 8, 16 and 32, where DeepLabV3+ reads it
            and where its stages end (layer-wise learning rates); without taps it can classify, not segment.
        imagenet_sizes: the square input sizes its ImageNet weights exist for; None: any size from min_size.
        min_size: the smallest input side the architecture accepts.
        has_width_multiplier: it takes `alpha` (the MobileNets).
        extra_arguments: further keyword arguments of the constructor.
        pretraining: the data its pretrained weights were trained on (None: it has no pretrained weights).
    """

    name: str
    constructor: str
    preprocessing: str
    normalization: str
    taps: dict[int, str] = field(default_factory=dict)
    imagenet_sizes: tuple[int, ...] | None = None
    min_size: int = 32
    has_width_multiplier: bool = False
    extra_arguments: dict = field(default_factory=dict)
    pretraining: str | None = "ImageNet-1k (1.28 million labelled photos; allowed: not PASCAL VOC)"

    @property
    def can_segment(self) -> bool:
        """DeepLabV3+ needs the stride-4 feature map and those of output strides 8 and 16."""
        return {4, 8, 16} <= set(self.taps)

    @property
    def frozen_when_fine_tuning(self) -> tuple[str, ...]:
        """The Keras layer classes fine-tuning keeps frozen in the unfrozen share of the backbone."""
        return FROZEN_WHEN_FINE_TUNING[self.normalization]

    @property
    def freezing_sentence(self) -> str:
        """What fine-tuning keeps frozen, in words."""
        return FREEZING_SENTENCES[self.normalization]


def convnext_taps(name: str) -> dict[int, str]:
    """ConvNeXt ends each stage in an unnamed residual addition, so a stage's output is taken where the next
    stage's downsampling block reads it: stride 4 from the first stage, 8 from the second, 16 from the third.
    The last stage (stride 32) feeds only an unnamed layer norm, which DeepLabV3+ never taps."""
    return {stride: f"{name}_downsampling_block_{stage}{INPUT_TAP}" for stage, stride in enumerate((4, 8, 16))}


def convnext(name: str, constructor: str) -> Backbone:
    # ConvNeXt normalises with ImageNet's mean and deviation itself (include_preprocessing), from raw 0..255.
    return Backbone(name, constructor, "raw", "layer", convnext_taps(name),
                    extra_arguments={"include_preprocessing": True})


TABLE: tuple[Backbone, ...] = (
    Backbone("mobilenet_v2", "keras.applications.MobileNetV2", "tf", "batch",
             {4: "block_3_expand_relu", 8: "block_6_expand_relu", 16: "block_13_expand_relu", 32: "out_relu"},
             imagenet_sizes=(96, 128, 160, 192, 224), has_width_multiplier=True),
    Backbone("mobilenet", "keras.applications.MobileNet", "tf", "batch",
             {4: "conv_pw_3_relu", 8: "conv_pw_5_relu", 16: "conv_pw_11_relu", 32: "conv_pw_13_relu"},
             imagenet_sizes=(128, 160, 192, 224), has_width_multiplier=True),
    Backbone("vgg16", "keras.applications.VGG16", "caffe", "none"),
    # ResNetV2 strides in the last block of a stage, so each stage's full-depth output sits one block earlier.
    Backbone("resnet50v2", "keras.applications.ResNet50V2", "tf", "batch",
             {4: "conv2_block2_out", 8: "conv3_block3_out", 16: "conv4_block5_out", 32: "post_relu"}),
    Backbone("efficientnetv2_s", "keras.applications.EfficientNetV2S", "raw", "batch",
             {4: "block2d_add", 8: "block3d_add", 16: "block5i_add", 32: "top_activation"},
             extra_arguments={"include_preprocessing": True}),
    convnext("convnext_tiny", "keras.applications.ConvNeXtTiny"),
    convnext("convnext_small", "keras.applications.ConvNeXtSmall"),
    convnext("convnext_base", "keras.applications.ConvNeXtBase"),
    # The small from-scratch CNN users compare against: no pretrained weights, no taps.
    Backbone("simple_cnn", "voc_pipeline.models.backbones.simple_cnn", "unit", "batch", pretraining=None),
)
BACKBONES: dict[str, Backbone] = {row.name: row for row in TABLE}
BACKBONE_NAMES = tuple(BACKBONES)
SEGMENTER_BACKBONES = tuple(row.name for row in TABLE if row.can_segment)


def backbone(name: str) -> Backbone:
    """The table's row for `name`, or a BackboneError listing the names it holds."""
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r}; expected one of: {', '.join(BACKBONE_NAMES)}")
    return BACKBONES[name]


def is_pretrained(weights: str) -> bool:
    """Whether a `weights` option starts from pretrained weights: "imagenet" or a weights file; "none" does not."""
    return weights.lower() != "none"


def describe_initial_weights(weights: str, row: Backbone) -> str:
    """What a training with the `weights` option starts from, in words."""
    if not is_pretrained(weights):
        return "random initial weights (no pretraining)"
    if weights == "imagenet":
        return f"weights pretrained on {row.pretraining}"
    return f"pretrained weights loaded from the file `{Path(weights).name}`"
