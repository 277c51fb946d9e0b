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


def choose_scales(options: Sequence[tuple[float, ...]], dice: Sequence[float]) -> tuple[float, ...]:
    """The scales whose masks scored the best validation Dice; 1.0 alone (listed first) on a tie."""
    return tuple(options[best_candidate(dice)])
