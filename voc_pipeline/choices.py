"""The values a configuration key may take, in one place that imports neither Keras nor TensorFlow.

`config.py` checks these when a configuration is built, so a typo fails before any data is loaded; the
modules that act on the values (losses, training, the segmenter, the attack) import them from here instead
of keeping lists of their own. The backbones are in their own table, `voc_pipeline.backbone_table`.
"""

from __future__ import annotations

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
