"""Decisions that maximise an image's expected score under calibrated probabilities (pure NumPy, no I/O).

Flags: with independent labels Y_k ~ Bernoulli(p_k), the flag set that maximises the expected F1 of an
image is a top-k set by probability (Lipton et al., 2014; Jansche, 2007); its exact expectation is a
small dynamic programme over the numbers of true labels inside and outside the set. Every image keeps
at least one class, as an empty row scores 0 against any non-empty truth.

Masks: each pixel takes its most probable accepted class c(x), with q(x) its probability among background
and the accepted classes. The expected Dice of the stack is close to 2 * sum of q over the kept pixels /
(their number + the expected number of true foreground pixels) (Nowozin, 2014); the best set keeps the m
most probable pixels for the best m, which is every pixel whose q exceeds half the optimum. The threshold
therefore differs per image: low where the model is unsure, near 0.5 where it is sure.
"""

from __future__ import annotations

import numpy as np

from voc_pipeline.core.scoring import EMPTY_AGAINST_EMPTY


def count_distributions(probabilities: np.ndarray) -> np.ndarray:
    """(N, K + 1) distribution of the number of successes among K independent Bernoulli(p) per row
    (the Poisson-binomial distribution), by the usual dynamic programme."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    count, width = probabilities.shape
    distribution = np.zeros((count, width + 1))
    distribution[:, 0] = 1.0
    for column in range(width):
        p = probabilities[:, column:column + 1]
        shifted = np.concatenate([np.zeros((count, 1)), distribution[:, :-1]], axis=1)
        distribution = distribution * (1 - p) + shifted * p
    return distribution


def expected_f1(flags: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """(N,) exact expected per-image F1 of 0/1 flags when label k is present with probability p_k, independently.

    F1 = 2 * |flags and truth| / (|flags| + |truth|); an empty row against an empty truth scores
    EMPTY_AGAINST_EMPTY, as in the competition's scoring.
    """
    flags = np.asarray(flags).astype(bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    result = np.zeros(len(flags))
    for image, (chosen, p) in enumerate(zip(flags, probabilities)):
        inside = count_distributions(p[chosen][None])[0]
        outside = count_distributions(p[~chosen][None])[0]
        size = int(chosen.sum())
        hits = np.arange(len(inside))[:, None]
        others = np.arange(len(outside))[None, :]
        total = size + hits + others
        with np.errstate(invalid="ignore", divide="ignore"):
            score = np.where(total > 0, 2.0 * hits / total, EMPTY_AGAINST_EMPTY)
        result[image] = float((inside[:, None] * outside[None, :] * score).sum())
    return result


def expected_f1_of_top_k(probabilities: np.ndarray) -> np.ndarray:
    """(N, C) expected F1 of flagging each image's k most probable classes, for k = 1 .. C (column k - 1)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-probabilities, axis=1, kind="stable")
    ranked = np.take_along_axis(probabilities, order, axis=1)
    count, width = ranked.shape
    result = np.zeros((count, width))
    for k in range(1, width + 1):
        inside = count_distributions(ranked[:, :k])  # (N, k + 1)
        outside = count_distributions(ranked[:, k:])  # (N, C - k + 1)
        hits = np.arange(k + 1)[:, None]
        others = np.arange(width - k + 1)[None, :]
        score = 2.0 * hits / (k + hits + others)
        result[:, k - 1] = np.einsum("na,nb,ab->n", inside, outside, score)
    return result


def expected_f1_flags(probabilities: np.ndarray) -> np.ndarray:
    """(N, C) int8 flags maximising each image's expected F1: its k most probable classes for the best k >= 1
    (the smallest such k on a tie)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    best_k = expected_f1_of_top_k(probabilities).argmax(1) + 1
    order = np.argsort(-probabilities, axis=1, kind="stable")
    flags = np.zeros(probabilities.shape, dtype=np.int8)
    ranks = np.argsort(order, axis=1)
    flags[ranks < best_k[:, None]] = 1
    return flags


def expected_dice_label_map(probabilities: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """The uint8 H x W label map maximising the (approximate) expected Dice of one image's class-mask stack.

    Args:
        probabilities: (H, W, 21) calibrated per-pixel probabilities, background first.
        accepted: (20,) flags of the classes the image is taken to hold; others are never painted.
    """
    accepted = np.asarray(accepted).astype(bool)
    height, width = probabilities.shape[:2]
    if not accepted.any():
        return np.zeros((height, width), np.uint8)
    classes = np.flatnonzero(accepted) + 1
    flat = probabilities.reshape(-1, probabilities.shape[-1])
    chosen = flat[:, classes]
    total = flat[:, 0] + chosen.sum(1)
    best = chosen.argmax(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(total > 0, chosen[np.arange(len(chosen)), best] / total, 0.0)
        expected_truth = float(np.where(total > 0, 1.0 - flat[:, 0] / total, 0.0).sum())
    order = np.argsort(-confidence, kind="stable")
    gains = np.cumsum(confidence[order])
    kept_count = np.arange(1, len(order) + 1)
    expected = 2.0 * gains / (kept_count + expected_truth)
    keep = int(expected.argmax()) + 1 if len(order) and expected.max() > 0 else 0
    labels = np.zeros(height * width, np.uint8)
    labels[order[:keep]] = classes[best[order[:keep]]]
    return labels.reshape(height, width)
