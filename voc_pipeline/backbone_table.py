"""The backbone table: one row per backbone, and nothing here imports Keras or TensorFlow.

A row says how to build a backbone (its constructor, named as a string and resolved in
`voc_pipeline.models`), how to feed it, which heads it carries, where the DeepLabV3+ segmenter taps it,
how it normalises and so what fine-tuning keeps frozen, and what its pretrained weights were trained on.
The configuration checks backbone names against this table, the training code decides what to freeze
from it, and the report states its facts from it. Adding a `keras.applications` backbone is one row; a
keras-hub encoder (DINOv2, SegFormer) is a row with its preset and architecture; another kind of model
also needs its builder in `voc_pipeline.models`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from voc_pipeline.errors import BackboneError

# The keras-hub release the DINOv2 and SegFormer rows are built with: the newest that installs beside both Keras 3.13
# (Kaggle's) and 3.15, and beside the kaggle client's kagglesdk (0.30 and later pin kagglesdk 0.1.28).
KERAS_HUB_VERSION = "0.29.1"

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

# What the course forbids: weights trained on PASCAL VOC (keras-hub's deeplab_v3_plus_resnet50_pascalvoc, ...).
VOC_TRAINED_MARKERS = ("pascalvoc", "pascal_voc", "voc2012", "voc2007")
IMAGENET = "ImageNet-1k (1.28 million labelled photos; allowed: not PASCAL VOC)"
LVD_142M = ("LVD-142M, 142 million curated web images, self-supervised without labels (DINOv2; allowed: not "
            "PASCAL VOC)")
ADE20K = "ImageNet-1k, then ADE20K's 150-class scene segmentation (SegFormer; allowed: not PASCAL VOC)"


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
        classifier_head: the classifier's head on it: "pooling" (global average pooling of the last feature map),
            "tokens" (a ViT's class token with its mean patch token) or None (it does not classify).
        segmenter_head: the segmenter on it: "deeplab" (DeepLabV3+ on its taps), "tokens" (a 1x1 convolution on
            a ViT's patch grid), "segformer" (SegFormer's own decode head) or None.
        preset: its keras-hub preset (the pretrained weights `weights` names), for keras-hub rows.
        architecture: its constructor's arguments, for building it with random weights without the preset.
        size_multiple: the input side must be a multiple of this (a ViT's patch size); such models take one
            fixed size, so the segmenter predicts at that size only.
        kaggle_model: the Kaggle Models handle of its preset, attached to a kernel that downloads nothing.
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
    pretraining: str | None = IMAGENET
    classifier_head: str | None = "pooling"
    segmenter_head: str | None = "deeplab"
    preset: str | None = None
    architecture: dict = field(default_factory=dict)
    size_multiple: int = 1
    kaggle_model: str | None = None

    @property
    def can_segment(self) -> bool:
        """DeepLabV3+ needs the stride-4 feature map and those of output strides 8 and 16; the other heads need none."""
        return self.segmenter_head not in (None, "deeplab") or {4, 8, 16} <= set(self.taps)

    @property
    def from_keras_hub(self) -> bool:
        return self.preset is not None

    @property
    def fixed_size(self) -> bool:
        """Whether a built model takes one input size only (keras-hub's ViT and MiT encoders)."""
        return self.size_multiple > 1

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


def dinov2(name: str, dimensions: tuple[int, int]) -> Backbone:
    """A DINOv2 ViT (patch 14) from keras-hub, for both heads; its architecture as its preset's (12 layers)."""
    hidden, heads = dimensions
    return Backbone(name, "keras_hub.models.DINOV2Backbone", "imagenet_standardize", "layer", pretraining=LVD_142M,
                    classifier_head="tokens", segmenter_head="tokens", preset=name, min_size=28, size_multiple=14,
                    kaggle_model=f"keras/dinov2/keras/{name}/1",
                    architecture={"patch_size": 14, "num_layers": 12, "hidden_dim": hidden, "num_heads": heads,
                                  "intermediate_dim": 4 * hidden, "layer_scale_init_value": 1.0})


def segformer(name: str, preset_version: str, depths: tuple[int, ...], hidden: tuple[int, ...], projection: int) -> Backbone:
    """A SegFormer (MiT encoder and its all-MLP decoder, ADE20K-trained) from keras-hub, for the segmenter only."""
    preset, version = preset_version.split("/")
    return Backbone(name, "keras_hub.models.SegFormerBackbone", "imagenet_standardize", "layer", pretraining=ADE20K,
                    classifier_head=None, segmenter_head="segformer", preset=preset, min_size=32, size_multiple=32,
                    kaggle_model=f"keras/segformer/keras/{preset}/{version}",
                    architecture={"layerwise_depths": list(depths), "hidden_dims": list(hidden), "num_layers": 4,
                                  "layerwise_num_heads": [1, 2, 5, 8], "layerwise_sr_ratios": [8, 4, 2, 1],
                                  "max_drop_path_rate": 0.1, "layerwise_patch_sizes": [7, 3, 3, 3],
                                  "layerwise_strides": [4, 2, 2, 2], "projection_filters": projection})


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
    *(dinov2(name, dimensions) for name, dimensions in (("dinov2_small", (384, 6)), ("dinov2_base", (768, 12)))),
    *(segformer(f"segformer_b{size}", preset, depths, hidden, projection)
      for size, preset, depths, hidden, projection in (
          (0, "segformer_b0_ade20k_512/3", (2, 2, 2, 2), (32, 64, 160, 256), 256),
          (1, "segformer_b1_ade20k_512/5", (2, 2, 2, 2), (64, 128, 320, 512), 256),
          (2, "segformer_b2_ade20k_512/3", (3, 4, 6, 3), (64, 128, 320, 512), 768),
          (3, "segformer_b3_ade20k_512/3", (3, 4, 18, 3), (64, 128, 320, 512), 768),
          (4, "segformer_b4_ade20k_512/3", (3, 8, 27, 3), (64, 128, 320, 512), 768),
          (5, "segformer_b5_ade20k_640/3", (3, 6, 40, 3), (64, 128, 320, 512), 768))),
)
BACKBONES: dict[str, Backbone] = {row.name: row for row in TABLE}
BACKBONE_NAMES = tuple(BACKBONES)
CLASSIFIER_BACKBONES = tuple(row.name for row in TABLE if row.classifier_head)
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
    if row.from_keras_hub:
        return f"the keras-hub preset `{Path(weights).name}`, pretrained on {row.pretraining}"
    return f"pretrained weights loaded from the file `{Path(weights).name}`"


def refuse_voc_trained(weights: str) -> None:
    """A BackboneError for weights trained on PASCAL VOC (by their name), which the course forbids."""
    if any(marker in weights.lower().replace("-", "_") for marker in VOC_TRAINED_MARKERS):
        raise BackboneError(f"weights {weights!r} were trained on PASCAL VOC, which the course forbids (its rules "
                            f"allow ImageNet, ADE20K or self-supervised weights, never VOC's): choose another preset")
