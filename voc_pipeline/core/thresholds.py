"""Per-class decision thresholds tuned for the competition's classification score (pure NumPy, no I/O).

The score of a classification row is the per-image F1 of its 20 flags, averaged over images, so the
thresholds maximise that mean, not each class's own F1. An empty prediction scores 0 against any
non-empty truth, so every image gets at least its most probable class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from voc_pipeline.core.calibration import calibrate_sigmoid, fit_sigmoid_temperature
from voc_pipeline.core.expected import expected_f1_flags
from voc_pipeline.core.scoring import classification_row_scores
from voc_pipeline.core.selection import choose_within_noise, cross_validated, cross_validated_rows

# Threshold of a class that cannot be tuned (no positive example among the tuning images).
DEFAULT_THRESHOLD = 0.5


def default_grid(step: float = 0.01) -> np.ndarray:
    """Candidate thresholds from `step` to 1 - `step`."""
    return np.round(np.arange(step, 1.0, step), 6)


def apply_thresholds(probabilities: np.ndarray, thresholds) -> np.ndarray:
    """0/1 flags: probability >= threshold, and the most probable class for an image left without any."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    flags = (probabilities >= np.asarray(thresholds, dtype=np.float64)).astype(np.int8)
    empty = flags.sum(1) == 0
    flags[np.flatnonzero(empty), probabilities[empty].argmax(1)] = 1
    return flags


def mean_image_f1(probabilities: np.ndarray, labels: np.ndarray, thresholds) -> float:
    """The classification half of the competition score for these thresholds."""
    return float(classification_row_scores(apply_thresholds(probabilities, thresholds), labels).mean())


def best_global_threshold(probabilities: np.ndarray, labels: np.ndarray, grid: np.ndarray | None = None) -> tuple[float, float]:
    """(threshold, score) of the best single threshold shared by all classes."""
    grid = default_grid() if grid is None else grid
    scores = [mean_image_f1(probabilities, labels, threshold) for threshold in grid]
    best = int(np.argmax(scores))
    return float(grid[best]), float(scores[best])


def class_scores_over_grid(probabilities: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, class_index: int,
                           grid: np.ndarray) -> np.ndarray:
    """Mean per-image F1 for each candidate threshold of one class, the other classes' thresholds fixed.

    Vectorised over images and candidates, including the rule that an image left without any class gets
    its most probable one.
    """
    truth = labels.astype(bool)
    others = np.delete(probabilities >= thresholds, class_index, axis=1)
    other_truth = np.delete(truth, class_index, axis=1)
    other_predicted = others.sum(1)[:, None]
    other_hits = (others & other_truth).sum(1)[:, None]
    chosen = probabilities[:, class_index][:, None] >= grid[None, :]
    predicted = other_predicted + chosen
    hits = other_hits + (chosen & truth[:, class_index][:, None])
    # Images with nothing predicted fall back to their most probable class.
    fallback_hit = truth[np.arange(len(truth)), probabilities.argmax(1)][:, None]
    empty = predicted == 0
    hits = np.where(empty, fallback_hit, hits)
    predicted = np.where(empty, 1, predicted)
    true_count = truth.sum(1)[:, None]
    return (2.0 * hits / (predicted + true_count)).mean(0)


def tune_thresholds(probabilities: np.ndarray, labels: np.ndarray, grid: np.ndarray | None = None, rounds: int = 3,
                    default: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, list[int]]:
    """Per-class thresholds by coordinate ascent on the mean per-image F1.

    Starts from the best global threshold; each round visits every class and moves its threshold to the
    grid value that maximises the score with the other thresholds fixed (ties keep the current value),
    until a round changes nothing. Classes without a positive example keep `default`.

    Returns:
        (thresholds of shape (C,), indices of classes left at the default).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int8)
    if probabilities.shape != labels.shape or probabilities.ndim != 2:
        raise ValueError(f"probabilities {probabilities.shape} and labels {labels.shape} must be equal (N, C) arrays")
    if not np.isfinite(probabilities).all():
        raise ValueError("probabilities contain NaN or infinite values")
    grid = default_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    untunable = [index for index in range(labels.shape[1]) if labels[:, index].sum() == 0]
    start, _ = best_global_threshold(probabilities, labels, grid)
    thresholds = np.full(labels.shape[1], start)
    thresholds[untunable] = default
    for _ in range(rounds):
        changed = False
        for class_index in range(labels.shape[1]):
            if class_index in untunable:
                continue
            scores = class_scores_over_grid(probabilities, labels, thresholds, class_index, grid)
            current = mean_image_f1(probabilities, labels, thresholds)
            best = int(np.argmax(scores))
            if scores[best] > current + 1e-12:
                thresholds[class_index] = grid[best]
                changed = True
        if not changed:
            break
    return thresholds, untunable


ThresholdChooser = Callable[[np.ndarray, np.ndarray], np.ndarray]


def threshold_chooser(strategy: str, grid: np.ndarray, rounds: int) -> ThresholdChooser:
    """(probabilities, labels) -> thresholds of a strategy: "global" (one threshold for every class) or
    "per-class" (coordinate ascent from the best global one)."""
    if strategy == "global":
        return lambda probabilities, labels: best_global_threshold(probabilities, labels, grid)[0]
    if strategy == "per-class":
        return lambda probabilities, labels: tune_thresholds(probabilities, labels, grid, rounds)[0]
    raise ValueError(f"unknown threshold strategy {strategy!r}; expected global or per-class")


def cross_validated_score(probabilities: np.ndarray, labels: np.ndarray, choose_thresholds: ThresholdChooser,
                          seed: int) -> float:
    """Mean per-image F1 of thresholds scored on images they were not chosen on (core.selection's halves)."""

    def fit_and_score(fit_half: np.ndarray, score_half: np.ndarray) -> float:
        thresholds = choose_thresholds(probabilities[fit_half], labels[fit_half])
        return mean_image_f1(probabilities[score_half], labels[score_half], thresholds)

    return cross_validated(fit_and_score, len(labels), seed)


# The ways to turn an image's probabilities into flags, simplest first: one threshold for every class; the
# expected-F1 set under probabilities calibrated by one temperature; one threshold per class (20 numbers).
STRATEGIES = ("global", "expected-f1", "per-class")
FlagRule = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FittedFlags:
    """A strategy fitted on validation probabilities: thresholds (global, per-class) or a temperature (expected-f1)."""

    strategy: str
    thresholds: np.ndarray
    temperature: float = 1.0

    def flags(self, probabilities: np.ndarray) -> np.ndarray:
        """(N, C) int8 flags of (N, C) probabilities; every image keeps at least one class."""
        if self.strategy == "expected-f1":
            return expected_f1_flags(calibrate_sigmoid(probabilities, self.temperature))
        return apply_thresholds(probabilities, self.thresholds)


def fit_flags(strategy: str, probabilities: np.ndarray, labels: np.ndarray, grid: np.ndarray, rounds: int) -> FittedFlags:
    """The strategy's parameters fitted on (N, C) probabilities and labels."""
    if strategy == "expected-f1":
        global_threshold = best_global_threshold(probabilities, labels, grid)[0]
        return FittedFlags(strategy, np.full(labels.shape[1], global_threshold),
                           fit_sigmoid_temperature(probabilities, labels))
    chosen = threshold_chooser(strategy, grid, rounds)(probabilities, labels)
    return FittedFlags(strategy, np.broadcast_to(np.asarray(chosen, dtype=np.float64), (labels.shape[1],)).copy())


def flag_fitter(strategy: str, grid: np.ndarray, rounds: int) -> Callable[[np.ndarray, np.ndarray], FittedFlags]:
    """(probabilities, labels) -> FittedFlags of one strategy."""
    return lambda probabilities, labels: fit_flags(strategy, probabilities, labels, grid, rounds)


def cross_validated_flag_rows(probabilities: np.ndarray, labels: np.ndarray, fitter, seed: int,
                              repeats: int) -> np.ndarray:
    """(N,) each image's F1 under the strategy fitted on the half of the images it is not in, averaged over repeats."""

    def fit_and_score(fit_half: np.ndarray, score_half: np.ndarray) -> np.ndarray:
        fitted = fitter(probabilities[fit_half], labels[fit_half])
        return classification_row_scores(fitted.flags(probabilities[score_half]), labels[score_half])

    return cross_validated_rows(fit_and_score, len(labels), seed, repeats)


def compare_strategies(probabilities: np.ndarray, labels: np.ndarray, grid: np.ndarray, rounds: int, seed: int,
                       repeats: int = 3) -> dict:
    """Classification score at 0.5 and under each strategy, in-sample and cross-validated.

    Each strategy is fitted on half of the images and scored on the other, over `repeats` splits; the chosen one
    is the simplest whose cross-validated score is within one standard error of the best (core.selection), so a
    strategy with more parameters is used only where the validation images support it.

    Returns:
        The scores, `chosen_strategy`, its `thresholds` (C,) and `temperature`, the classes it left `untuned`, and
        `cross_validated_rows` (N,) of the chosen strategy.
    """
    fitted = {strategy: fit_flags(strategy, probabilities, labels, grid, rounds) for strategy in STRATEGIES}
    rows = np.stack([cross_validated_flag_rows(probabilities, labels, flag_fitter(strategy, grid, rounds), seed, repeats)
                     for strategy in STRATEGIES])
    chosen = STRATEGIES[choose_within_noise(rows)] if np.isfinite(rows).all() else "global"
    in_sample = {strategy: float(classification_row_scores(fitted[strategy].flags(probabilities), labels).mean())
                 for strategy in STRATEGIES}
    cross_validated = dict(zip(STRATEGIES, rows.mean(1).tolist()))
    untuned = [index for index in range(labels.shape[1]) if labels[:, index].sum() == 0]
    return {
        "threshold_0.5": mean_image_f1(probabilities, labels, 0.5),
        "global_threshold": float(fitted["global"].thresholds[0]),
        "global": in_sample["global"],
        "global_cross_validated": cross_validated["global"],
        "expected_f1": in_sample["expected-f1"],
        "expected_f1_cross_validated": cross_validated["expected-f1"],
        "temperature": fitted["expected-f1"].temperature,
        "per_class": in_sample["per-class"],
        "per_class_cross_validated": cross_validated["per-class"],
        "chosen_strategy": chosen,
        "thresholds": fitted[chosen].thresholds,
        "untuned": untuned if chosen == "per-class" else [],
        "cross_validated_rows": rows[STRATEGIES.index(chosen)],
    }
