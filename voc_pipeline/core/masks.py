"""From the segmenter's per-pixel probabilities and the accepted classes to a label map (pure NumPy).

The classifier usually knows which classes an image holds; the segmenter knows better where objects
are than what they are. Mask rules combine the two, each a candidate chosen on validation:
- "independent": the segmenter alone, the most probable label per pixel;
- "remove-rejected": the same, with pixels of classes the flags reject turned into background;
- "guided": the most probable of background and the accepted classes, per pixel;
- "two-step": a pixel is foreground when its background probability is below the foreground total
  (below 0.5), and then takes the accepted class with the highest probability;
- "expected-dice": the accepted classes' pixels that maximise the image's expected Dice under the
  calibrated probabilities (voc_pipeline.core.expected): a threshold of its own for each image.
A fallback paints, for an accepted class whose mask is empty or tiny, that class's typical box from the
training masks, on background pixels only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voc_pipeline.core.calibration import calibrate_softmax
from voc_pipeline.core.classes import NUM_CLASSES
from voc_pipeline.core.expected import expected_dice_label_map

MASK_RULES = ("independent", "remove-rejected", "guided", "two-step", "expected-dice")


def label_map(probabilities: np.ndarray, accepted: np.ndarray, rule: str, temperature: float = 1.0) -> np.ndarray:
    """The uint8 H x W label map (0 = background, k = class k) of one image under a mask rule.

    Args:
        probabilities: (H, W, 21) per-pixel probabilities, background first.
        accepted: (20,) flags of the classes the image is taken to hold.
        rule: one of MASK_RULES.
        temperature: the segmenter's calibration, read by the expected-dice rule only (the others use
            rankings, which a temperature does not change).
    """
    accepted = np.asarray(accepted).astype(bool)
    if rule == "independent":
        return probabilities.argmax(-1).astype(np.uint8)
    allowed = np.concatenate([[True], accepted])
    if rule == "remove-rejected":
        labels = probabilities.argmax(-1)
        return np.where(allowed[labels], labels, 0).astype(np.uint8)
    if rule == "guided":
        return np.where(allowed, probabilities, -1.0).argmax(-1).astype(np.uint8)
    if rule == "two-step":
        if not accepted.any():
            return np.zeros(probabilities.shape[:2], np.uint8)
        foreground = probabilities[..., 0] < 1.0 - probabilities[..., 0]
        best = np.where(allowed[1:], probabilities[..., 1:], -1.0).argmax(-1) + 1
        return np.where(foreground, best, 0).astype(np.uint8)
    if rule == "expected-dice":
        return expected_dice_label_map(calibrate_softmax(probabilities, temperature), accepted)
    raise ValueError(f"unknown mask rule {rule!r}; expected one of {MASK_RULES}")


def class_evidence(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(largest probability of each class anywhere, share of pixels whose most probable label is the class),
    each (20,): what the segmenter says about which classes the image holds."""
    flat = probabilities.reshape(-1, probabilities.shape[-1])
    counts = np.bincount(flat.argmax(-1), minlength=NUM_CLASSES + 1)[1:]
    return flat[:, 1:].max(0), counts / max(flat.shape[0], 1)


def typical_boxes(true_maps: Sequence[np.ndarray], num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(20, 4) median box [top, left, bottom, right] (fractions of the image) of each class's pixels in the
    training masks; a centred half-size box for a class that never appears."""
    boxes: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    for truth in true_maps:
        height, width = truth.shape
        for label in np.unique(truth):
            if 0 < label <= num_classes:
                rows = np.flatnonzero((truth == label).any(1))
                columns = np.flatnonzero((truth == label).any(0))
                boxes[label - 1].append(np.array([rows[0] / height, columns[0] / width,
                                                  (rows[-1] + 1) / height, (columns[-1] + 1) / width]))
    centre = np.array([0.25, 0.25, 0.75, 0.75])
    return np.stack([np.median(found, axis=0) if found else centre for found in boxes])


def fill_missing_classes(labels: np.ndarray, accepted: np.ndarray, boxes: np.ndarray, tiny_fraction: float) -> np.ndarray:
    """Paint each accepted class whose mask covers less than `tiny_fraction` of the image with its typical
    box, over background pixels only (a copy; `labels` is not modified)."""
    filled = labels.copy()
    height, width = labels.shape
    for index in np.flatnonzero(np.asarray(accepted).astype(bool)):
        if np.count_nonzero(labels == index + 1) >= tiny_fraction * labels.size:
            continue
        top, left, bottom, right = boxes[index]
        rows = slice(int(round(top * height)), max(int(round(bottom * height)), int(round(top * height)) + 1))
        columns = slice(int(round(left * width)), max(int(round(right * width)), int(round(left * width)) + 1))
        region = filled[rows, columns]
        region[region == 0] = index + 1
    return filled
