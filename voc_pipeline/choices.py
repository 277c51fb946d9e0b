"""The values a configuration key may take, in one place that imports neither Keras nor TensorFlow.

`config.py` checks these when a configuration is built, so a typo fails before any data is loaded; the
modules that act on the values (backbones, losses, training, the attack) import them from here instead
of keeping lists of their own.
"""

from __future__ import annotations

INPUT_TAP = "/input"


def _convnext_taps(name: str) -> dict[int, str]:
    """ConvNeXt ends each stage in an unnamed residual addition, so a stage's output is taken where the next
    stage's downsampling block reads it: stride 4 from the first stage, 8 from the second, 16 from the third.
    The last stage (stride 32) feeds only an unnamed layer norm, which DeepLabV3+ never taps."""
    return {stride: f"{name}_downsampling_block_{stage}{INPUT_TAP}" for stage, stride in enumerate((4, 8, 16))}


# The backbone table: each backbone's layer names of the feature maps at output strides 4, 8, 16 and 32,
# which the DeepLabV3+ decoder and ASPP tap. A backbone without taps can classify but not segment.
# A name ending in INPUT_TAP ("<layer>/input") taps that layer's input rather than its output (Keras never
# puts a "/" in a layer name).
BACKBONE_TAPS: dict[str, dict[int, str]] = {
    "mobilenet_v2": {4: "block_3_expand_relu", 8: "block_6_expand_relu", 16: "block_13_expand_relu", 32: "out_relu"},
    "mobilenet": {4: "conv_pw_3_relu", 8: "conv_pw_5_relu", 16: "conv_pw_11_relu", 32: "conv_pw_13_relu"},
    "vgg16": {},
    # ResNetV2 strides in the last block of a stage, so each stage's full-depth output sits one block earlier.
    "resnet50v2": {4: "conv2_block2_out", 8: "conv3_block3_out", 16: "conv4_block5_out", 32: "post_relu"},
    "efficientnetv2_s": {4: "block2d_add", 8: "block3d_add", 16: "block5i_add", 32: "top_activation"},
    "convnext_tiny": _convnext_taps("convnext_tiny"),
    "convnext_small": _convnext_taps("convnext_small"),
    "convnext_base": _convnext_taps("convnext_base"),
    "simple_cnn": {},
}
BACKBONES = tuple(BACKBONE_TAPS)
SEGMENTER_BACKBONES = tuple(name for name, taps in BACKBONE_TAPS.items() if taps)

# Multi-label classification losses (voc_pipeline.models.losses).
CLASSIFIER_LOSSES = ("bce", "focal", "asymmetric")
# Mixed float16 precision: on GPU only (auto), always, or never.
MIXED_PRECISION_MODES = ("auto", "on", "off")
# DeepLabV3+ output strides and their atrous rates (the rates double when the stride halves).
ATROUS_RATES: dict[int, tuple[int, int, int]] = {16: (6, 12, 18), 8: (12, 24, 36)}
OUTPUT_STRIDES = tuple(sorted(ATROUS_RATES))
# Pixel levels of raw uint8 images: the unit of the attack's L-infinity budgets.
PIXEL_LEVELS = (0, 255)
# Bits per channel the bit-depth-reduction defence may keep.
DEFENCE_BITS = (1, 8)
