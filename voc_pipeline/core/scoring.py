"""The competition's score and the segmentation metrics (pure NumPy, no I/O).

Every submission row scores a Dice coefficient: a classification row the per-image F1 of its 20 flags,
a segmentation row one Dice over the whole 20 x H x W stack (background is not part of it). The
leaderboard score is the plain mean over all rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voc_pipeline.core.classes import NUM_CLASSES, VOID_LABEL
from voc_pipeline.core.rle import parse_runs

# How an empty prediction against an empty truth is scored is not published; Kaggle's Dice metrics
# count it as a perfect match, and so do we.
EMPTY_AGAINST_EMPTY = 1.0


def dice_from_counts(intersection, predicted_count, true_count) -> np.ndarray:
    """Dice = 2|P and T| / (|P| + |T|), elementwise; EMPTY_AGAINST_EMPTY where both counts are 0."""
    intersection = np.asarray(intersection, dtype=np.float64)
    total = np.asarray(predicted_count, dtype=np.float64) + np.asarray(true_count, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        dice = np.where(total > 0, 2.0 * intersection / total, EMPTY_AGAINST_EMPTY)
    return dice


def classification_row_scores(predicted_flags: np.ndarray, true_flags: np.ndarray) -> np.ndarray:
    """Per-image F1 of the class flags.

    Args:
        predicted_flags, true_flags: (N, num_classes) arrays of 0/1.

    Returns:
        (N,) float64 scores, one per classification row.
    """
    predicted = np.asarray(predicted_flags).astype(bool)
    truth = np.asarray(true_flags).astype(bool)
    if predicted.shape != truth.shape or predicted.ndim != 2:
        raise ValueError(f"flags must be two equal (N, C) arrays, got {predicted.shape} and {truth.shape}")
    return dice_from_counts((predicted & truth).sum(1), predicted.sum(1), truth.sum(1))


def segmentation_row_score(predicted_map: np.ndarray, true_map: np.ndarray) -> float:
    """One Dice over the 20 x H x W stack of class masks of two H x W label maps.

    A pixel counts in the intersection when both maps give it the same foreground class; pixels
    labelled VOID_LABEL in the truth are background for the competition (it has no void) and so are
    treated as background here too.
    """
    predicted = np.asarray(predicted_map)
    truth = np.asarray(true_map)
    if predicted.shape != truth.shape:
        raise ValueError(f"label maps differ in shape: predicted {predicted.shape}, truth {truth.shape}")
    predicted_foreground = (predicted > 0) & (predicted != VOID_LABEL)
    true_foreground = (truth > 0) & (truth != VOID_LABEL)
    intersection = np.count_nonzero(predicted_foreground & (predicted == truth))
    return float(dice_from_counts(intersection, predicted_foreground.sum(), true_foreground.sum()))


def segmentation_row_scores(predicted_maps: Sequence[np.ndarray], true_maps: Sequence[np.ndarray]) -> np.ndarray:
    """segmentation_row_score for each pair of label maps, as an (N,) array."""
    if len(predicted_maps) != len(true_maps):
        raise ValueError(f"{len(predicted_maps)} predicted maps for {len(true_maps)} true maps")
    return np.array([segmentation_row_score(p, t) for p, t in zip(predicted_maps, true_maps)], dtype=np.float64)


def competition_score(classification_scores: np.ndarray, segmentation_scores: np.ndarray) -> dict[str, float]:
    """The leaderboard score (mean over all rows) and the mean of each kind of row."""
    classification_scores = np.asarray(classification_scores, dtype=np.float64)
    segmentation_scores = np.asarray(segmentation_scores, dtype=np.float64)
    all_rows = np.concatenate([classification_scores, segmentation_scores])
    return {
        "score": float(all_rows.mean()) if all_rows.size else float("nan"),
        "classification": float(classification_scores.mean()) if classification_scores.size else float("nan"),
        "segmentation": float(segmentation_scores.mean()) if segmentation_scores.size else float("nan"),
    }


def run_intersection_length(starts_a, lengths_a, starts_b, lengths_b) -> int:
    """Number of positions covered by both of two sorted, non-overlapping run lists.

    Sweeps the run boundaries of both lists in order: the covered-by-both length is the total length of
    the stretches where the coverage count is 2. Ties between boundaries only create zero-length
    stretches, so their order does not matter.
    """
    positions = np.concatenate([starts_a, starts_a + lengths_a, starts_b, starts_b + lengths_b])
    steps = np.concatenate([np.ones(len(starts_a)), -np.ones(len(starts_a)), np.ones(len(starts_b)), -np.ones(len(starts_b))])
    order = np.argsort(positions, kind="stable")
    positions, steps = positions[order], steps[order]
    coverage = np.cumsum(steps)[:-1]
    stretch_lengths = np.diff(positions)
    return int(stretch_lengths[coverage == 2].sum())


def rle_row_dice(predicted_text: str, true_text: str) -> float:
    """Dice between two run-length rows, computed on the runs without decoding them."""
    predicted_starts, predicted_lengths = parse_runs(predicted_text)
    true_starts, true_lengths = parse_runs(true_text)
    intersection = run_intersection_length(predicted_starts, predicted_lengths, true_starts, true_lengths)
    return float(dice_from_counts(intersection, predicted_lengths.sum(), true_lengths.sum()))


def confusion_matrix(predicted_map: np.ndarray, true_map: np.ndarray, num_labels: int = NUM_CLASSES + 1,
                     ignore_label: int = VOID_LABEL) -> np.ndarray:
    """(num_labels, num_labels) pixel counts, rows = truth, columns = prediction; ignored pixels skipped."""
    predicted = np.asarray(predicted_map).ravel().astype(np.int64)
    truth = np.asarray(true_map).ravel().astype(np.int64)
    if predicted.shape != truth.shape:
        raise ValueError(f"label maps differ in size: {predicted.shape} and {truth.shape}")
    keep = truth != ignore_label
    predicted, truth = predicted[keep], truth[keep]
    if truth.size and (truth.max() >= num_labels or predicted.max() >= num_labels or min(truth.min(), predicted.min()) < 0):
        raise ValueError(f"labels must be in 0..{num_labels - 1} (or {ignore_label} in the truth)")
    return np.bincount(truth * num_labels + predicted, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """Intersection over union per label from a confusion matrix; NaN for a label absent from both."""
    confusion = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, intersection / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean of iou_per_class over the labels present in the prediction or the truth."""
    return float(np.nanmean(iou_per_class(confusion)))


def segmentation_report(predicted_maps: Sequence[np.ndarray], true_maps: Sequence[np.ndarray]) -> dict:
    """IoU per label and mean IoU (void skipped), and the competition's segmentation-row Dice.

    Also gives the Dice of an all-background answer on the same images, the floor a model must beat.
    """
    confusion = sum(confusion_matrix(predicted, truth) for predicted, truth in zip(predicted_maps, true_maps))
    empty_maps = [np.zeros_like(truth) for truth in true_maps]
    return {
        "mean_iou": mean_iou(confusion),
        "iou_per_label": iou_per_class(confusion),
        "segmentation_dice": float(segmentation_row_scores(predicted_maps, true_maps).mean()),
        "all_background_dice": float(segmentation_row_scores(empty_maps, true_maps).mean()),
    }


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one class: the mean of the precisions at each positive, weighted by the recall
    it adds, with tied scores taken together (scikit-learn's `average_precision_score`).

    NaN when `labels` holds no positive.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in shape")
    if not labels.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    # The last position of each run of equal scores: one point of the precision-recall curve each.
    cut_points = np.concatenate([np.flatnonzero(np.diff(scores)), [labels.size - 1]])
    true_positives = np.cumsum(labels)[cut_points]
    precision = true_positives / (cut_points + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def average_precisions(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(C,) average precision of each column of (N, C) labels and scores; NaN for a class without positives."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    return np.array([average_precision(labels[:, index], scores[:, index]) for index in range(labels.shape[1])])
