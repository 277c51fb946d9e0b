"""Pseudo-labels for self-training: which test images, which of their pixels, and which flags (pure NumPy, no I/O).

A test image is pseudo-labelled when both heads agree on its main class: the classifier's most probable class is
the class the segmenter paints over the most pixels, and both are confident in it, the image's score being the
smaller of the classifier's probability and the segmenter's class presence (core.presence). The score a test image
needs is chosen on validation images, as the lowest at which `image_precision` of the agreeing validation images
at or above it truly hold their agreed class (`precision_threshold`).

Within a chosen image a pixel keeps the segmenter's label when its probability is at least the threshold at which
`pixel_precision` of validation pixels were right (`histogram_threshold`); the other pixels get the void label,
which the segmentation loss ignores. A class keeping less than `minimum_area` of the image is voided too, and the
flags are the classes the pseudo mask still holds: the classifier learns exactly what the mask shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from voc_pipeline.core.classes import NUM_CLASSES, VOID_LABEL
from voc_pipeline.core.presence import presence_scores

# Bins of the pixel probability histograms (their edges are the candidate pixel thresholds).
CONFIDENCE_BINS = 100
NO_AGREEMENT = -1


def precision_threshold(scores: np.ndarray, correct: np.ndarray, precision: float) -> float:
    """The lowest score t such that at least `precision` of the items scoring t or more are correct; math.inf when
    no t does (nothing passes). Items of equal score pass or fail together."""
    scores, correct = np.asarray(scores, dtype=np.float64), np.asarray(correct, dtype=bool)
    if scores.shape != correct.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and correct {correct.shape} must be two 1-D arrays of one length")
    if np.isnan(scores).any():
        raise ValueError("precision_threshold: the scores hold NaN")
    if scores.size == 0:
        return math.inf
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(correct[order])
    shares = hits / np.arange(1, ranked.size + 1)
    # A cut may fall only after the last of a run of equal scores.
    cuts = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    passing = cuts[shares[cuts] >= precision]
    return float(ranked[passing.max()]) if passing.size else math.inf


def histogram_threshold(correct_counts: np.ndarray, total_counts: np.ndarray, precision: float) -> float:
    """The lowest bin edge (of CONFIDENCE_BINS equal bins over [0, 1]) at which at least `precision` of the pixels
    with that probability or more were right; math.inf when no edge does."""
    correct_counts, total_counts = np.asarray(correct_counts, np.float64), np.asarray(total_counts, np.float64)
    if correct_counts.shape != (CONFIDENCE_BINS,) or total_counts.shape != (CONFIDENCE_BINS,):
        raise ValueError(f"histograms must have {CONFIDENCE_BINS} bins, got {correct_counts.shape} and {total_counts.shape}")
    if (correct_counts > total_counts).any():
        raise ValueError("a bin holds more correct pixels than pixels")
    above_correct, above_total = np.cumsum(correct_counts[::-1])[::-1], np.cumsum(total_counts[::-1])[::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = above_correct / above_total
    passing = np.flatnonzero((above_total > 0) & (shares >= precision))
    return float(passing.min()) / CONFIDENCE_BINS if passing.size else math.inf


def confidence_histograms(confidence: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right pixels, all pixels) per confidence bin, for `histogram_threshold`."""
    bins = np.minimum((np.asarray(confidence, np.float64) * CONFIDENCE_BINS).astype(np.int64), CONFIDENCE_BINS - 1)
    return (np.bincount(bins[right], minlength=CONFIDENCE_BINS),
            np.bincount(bins.ravel(), minlength=CONFIDENCE_BINS))


@dataclass(frozen=True)
class SegmenterView:
    """What pseudo-labelling keeps of one image's (H, W, 21) segmenter probabilities: its label map, each pixel's
    probability of that label, and the class presences."""

    labels: np.ndarray
    confidence: np.ndarray
    presence: np.ndarray

    @classmethod
    def of(cls, probabilities: np.ndarray) -> SegmenterView:
        probabilities = np.asarray(probabilities)
        if probabilities.ndim != 3 or probabilities.shape[-1] != NUM_CLASSES + 1:
            raise ValueError(f"expected (H, W, {NUM_CLASSES + 1}) probabilities, got shape {probabilities.shape}")
        return cls(probabilities.argmax(-1).astype(np.uint8), probabilities.max(-1).astype(np.float32),
                   presence_scores(probabilities))


def agreement(classifier_probabilities: np.ndarray, view: SegmenterView) -> tuple[int, float]:
    """(the class index 0..19 both heads hold the image's main class, its score), or (NO_AGREEMENT, 0.0).

    The score is the smaller of the classifier's probability of that class and the segmenter's presence of it.
    """
    classifier_probabilities = np.asarray(classifier_probabilities, np.float64)
    if classifier_probabilities.shape != (NUM_CLASSES,):
        raise ValueError(f"expected ({NUM_CLASSES},) classifier probabilities, got {classifier_probabilities.shape}")
    areas = np.bincount(view.labels.ravel(), minlength=NUM_CLASSES + 1)[1:NUM_CLASSES + 1]
    painted, chosen = int(areas.argmax()), int(classifier_probabilities.argmax())
    if areas[painted] == 0 or painted != chosen:
        return NO_AGREEMENT, 0.0
    return chosen, float(min(classifier_probabilities[chosen], view.presence[chosen]))


def pseudo_label(view: SegmenterView, pixel_threshold: float, minimum_area: float) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 mask with VOID_LABEL where unsure, (20,) int8 flags) of one image.

    A pixel keeps its label when its probability is at least `pixel_threshold`; a foreground class keeping less
    than `minimum_area` of the image's pixels is voided; the flags are the foreground classes left in the mask.
    """
    mask = np.where(view.confidence >= pixel_threshold, view.labels, VOID_LABEL).astype(np.uint8)
    counts = np.bincount(mask.ravel(), minlength=VOID_LABEL + 1)[1:NUM_CLASSES + 1]
    too_small = np.flatnonzero((counts > 0) & (counts < minimum_area * mask.size)) + 1
    mask[np.isin(mask, too_small)] = VOID_LABEL
    flags = np.zeros(NUM_CLASSES, dtype=np.int8)
    present = np.unique(mask)
    flags[present[(present > 0) & (present <= NUM_CLASSES)] - 1] = 1
    return mask, flags
