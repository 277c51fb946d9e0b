"""The segmenter's class presence: its pixel probabilities of each class pooled into one probability per image
(pure NumPy, no I/O).

Presence of class c = the power mean of p_c over the image's pixels, (mean p_c^r)^(1/r), computed as a
log-sum-exp of the log-probabilities: log M = (logsumexp_i(r log p_ic) - log n) / r. With r = 1 it is the
class's mean probability (its expected area), as r grows it tends to the largest pixel probability; r =
PRESENCE_POWER sits between, so that a small object counts (a class painted with certainty on 1% of the image
gets 0.56) while scattered doubt does not (0.05 everywhere gives 0.05).

The same pooling trains the segmenter when `segmenter.presence_weight` > 0 (models.losses.SegmentationLoss: the
binary cross-entropy of these presences against the classes its mask holds, so the masks teach it which classes
an image holds), and gives `tune` a third flag source beside the classifier and fused evidence.
"""

from __future__ import annotations

import numpy as np

PRESENCE_POWER = 8.0
# The smallest probability taken into the logarithm: far below anything a float32 softmax gives a visible class.
SMALLEST_PROBABILITY = 1e-30


def presence_scores(probabilities: np.ndarray, power: float = PRESENCE_POWER) -> np.ndarray:
    """(..., 20) presence of each class from (..., H, W, 21) per-pixel probabilities (background first)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim < 3 or probabilities.shape[-1] != 21:
        raise ValueError(f"presence_scores expects (..., H, W, 21) probabilities, got shape {probabilities.shape}")
    classes = probabilities[..., 1:]
    logs = power * np.log(np.maximum(classes, SMALLEST_PROBABILITY))
    pixels = classes.shape[-3] * classes.shape[-2]
    largest = logs.max(axis=(-3, -2), keepdims=True)
    pooled = np.log(np.exp(logs - largest).sum(axis=(-3, -2))) + largest[..., 0, 0, :]
    return np.minimum(np.exp((pooled - np.log(pixels)) / power), 1.0)

