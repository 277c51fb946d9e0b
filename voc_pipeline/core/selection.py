"""How tune chooses between candidates on validation images (pure NumPy, no I/O).

Two kinds of choice, each with one implementation:
- a candidate that is itself fitted on the images (thresholds of a strategy, a fusion model) is scored
  cross-validated: fitted on one half of the images and scored on the other, then the other way round,
  so that it cannot win by fitting noise;
- among fixed candidates (the segmenter's scales, the joint rules) the best mean score wins, and on a tie
  the first, since candidates are listed simplest first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def halves(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions 0..count-1 shuffled by `seed` and cut into two halves (the second gets the odd one)."""
    order = np.random.default_rng(seed).permutation(count)
    return order[: count // 2], order[count // 2:]


def cross_validated(fit_and_score: Callable[[np.ndarray, np.ndarray], float], count: int, seed: int) -> float:
    """The mean score of a fitted candidate over images it was not fitted on.

    Args:
        fit_and_score: (fit positions, score positions) -> the candidate fitted on the first images, its
            mean score on the second.
        count: the number of images.
        seed: the seed of the split into halves.

    Returns:
        Each half's mean score weighted by its size; NaN when a half is empty (fewer than two images).
    """
    first, second = halves(count, seed)
    if min(len(first), len(second)) == 0:
        return float("nan")
    total = 0.0
    for fit_half, score_half in ((first, second), (second, first)):
        total += fit_and_score(fit_half, score_half) * len(score_half)
    return float(total / count)


def best_candidate(scores: Sequence[float]) -> int:
    """The position of the highest score; the first on ties (candidates come simplest first)."""
    return max(range(len(scores)), key=lambda index: (scores[index], -index))


def scale_options(configured: Sequence[float]) -> list[tuple[float, ...]]:
    """The segmenter's scale candidates: 1.0 alone first (the simpler answer), then the configured scales if
    they differ from it."""
    configured = tuple(float(scale) for scale in configured)
    return [(1.0,)] if configured == (1.0,) else [(1.0,), configured]


def choose_scales(options: Sequence[tuple[float, ...]], dice: np.ndarray) -> tuple[float, ...]:
    """The scales to predict at, from (options, N) per-image Dice of each option's masks: 1.0 alone (listed first)
    unless more scales win by more than the noise (choose_within_noise)."""
    return tuple(options[choose_within_noise(dice)])


def cross_validated_rows(fit_and_score: Callable[[np.ndarray, np.ndarray], np.ndarray], count: int, seed: int,
                         repeats: int = 1) -> np.ndarray:
    """Every image's score by a candidate fitted without it: (N,), averaged over `repeats` splits into halves.

    Args:
        fit_and_score: (fit positions, score positions) -> the candidate fitted on the first images, the (len(score),)
            scores of the second.
        seed: the first split's seed; repeat r uses seed + r.

    Returns:
        NaN for every image when there are fewer than two.
    """
    rows = np.zeros(count)
    if count < 2:
        return np.full(count, np.nan)
    for repeat in range(repeats):
        first, second = halves(count, seed + repeat)
        for fit_half, score_half in ((first, second), (second, first)):
            rows[score_half] += np.asarray(fit_and_score(fit_half, score_half), dtype=np.float64)
    return rows / repeats


def standard_error(values: np.ndarray) -> float:
    """The standard error of the mean of per-image values (0 for fewer than two)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def choose_within_noise(rows: np.ndarray) -> int:
    """The simplest candidate whose mean score is within one standard error of the best one's (the one-standard-
    error rule, with the error of the paired per-image difference): a more complex candidate replaces a simpler
    one only when it wins by more than the noise of the estimate.

    Args:
        rows: (K, N) per-image scores of K candidates, simplest first, on the same N images.
    """
    rows = np.asarray(rows, dtype=np.float64)
    best = best_candidate(rows.mean(1).tolist())
    for index in range(len(rows)):
        difference = rows[best] - rows[index]
        if difference.mean() <= standard_error(difference):
            return index
    return best


def held_out_selection(rows: np.ndarray, seed: int, repeats: int = 5) -> np.ndarray:
    """(N,) each image's score under the candidate that `choose_within_noise` picks on the other half of the
    images, averaged over `repeats` splits: an honest estimate of what choosing among the candidates yields."""
    rows = np.asarray(rows, dtype=np.float64)
    return cross_validated_rows(lambda fit, score: rows[choose_within_noise(rows[:, fit]), score], rows.shape[1], seed,
                                repeats)


def bootstrap_interval(values: np.ndarray, seed: int, level: float = 0.9, resamples: int = 2000) -> tuple[float, float]:
    """The `level` percentile interval of the mean of per-image values, resampling images with replacement."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
