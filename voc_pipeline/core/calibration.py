"""Temperature scaling (pure NumPy): probabilities that mean what they say, fitted on validation by log-loss.

One temperature per head (Guo et al., 2017): the classifier's sigmoids become sigmoid(logit / T), the
segmenter's per-pixel distributions p become p^(1/T) renormalised (the same as dividing its logits by T
when p is one softmax; for maps averaged over flips and scales it is the natural extension). T > 1 softens
an over-confident model, T < 1 sharpens an under-confident one; T = 1 changes nothing. A temperature
moves no argmax and no ranking within a class, so it matters only to decisions that read probabilities
as probabilities: the expected-F1 flags and the expected-Dice masks (voc_pipeline.core.expected).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from voc_pipeline.core.probability import logit, sigmoid

# Temperatures searched, on a log scale: a model 20 times too sure or too unsure is beyond repair by one number.
LOWEST, HIGHEST = 0.05, 20.0
FLOOR = 1e-12


def minimise_on_log_scale(loss: Callable[[float], float], low: float = LOWEST, high: float = HIGHEST) -> float:
    """The temperature in [low, high] with the smallest loss: a coarse grid on log T, then golden-section search
    around its best point (the log-loss of a temperature is smooth and, in practice, has one minimum)."""
    grid = np.exp(np.linspace(np.log(low), np.log(high), 41))
    values = [loss(float(t)) for t in grid]
    best = int(np.argmin(values))
    left, right = np.log(grid[max(best - 1, 0)]), np.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        inner_left, inner_right = right - ratio * (right - left), left + ratio * (right - left)
        if loss(float(np.exp(inner_left))) <= loss(float(np.exp(inner_right))):
            right = inner_right
        else:
            left = inner_left
    return float(np.exp((left + right) / 2))


def calibrate_sigmoid(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Sigmoid probabilities with their logits divided by `temperature`."""
    return sigmoid(logit(probabilities) / temperature)


def sigmoid_log_loss(probabilities: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of the calibrated probabilities against 0/1 labels."""
    calibrated = np.clip(calibrate_sigmoid(probabilities, temperature), FLOOR, 1 - FLOOR)
    labels = np.asarray(labels, dtype=np.float64)
    return float(-(labels * np.log(calibrated) + (1 - labels) * np.log(1 - calibrated)).mean())


def fit_sigmoid_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The classifier's temperature: the one minimising the log-loss of its (N, C) probabilities; 1.0 when the
    labels hold a single value (nothing to calibrate against)."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return 1.0
    return minimise_on_log_scale(lambda temperature: sigmoid_log_loss(probabilities, labels, temperature))


def calibrate_softmax(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Distributions over the last axis raised to 1 / temperature and renormalised (float32 for maps)."""
    if temperature == 1.0:
        return probabilities
    powered = np.power(np.maximum(probabilities, FLOOR), 1.0 / temperature)
    return (powered / powered.sum(-1, keepdims=True)).astype(probabilities.dtype, copy=False)


def softmax_log_loss(probabilities: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true labels under the calibrated (P, C) distributions."""
    calibrated = calibrate_softmax(np.asarray(probabilities, dtype=np.float64), temperature)
    return float(-np.log(np.maximum(calibrated[np.arange(len(labels)), labels], FLOOR)).mean())


def fit_softmax_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The segmenter's temperature, from (P, C) pixel distributions and their (P,) true labels; 1.0 without pixels."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return 1.0
    return minimise_on_log_scale(lambda temperature: softmax_log_loss(probabilities, labels, temperature))


def sample_pixels(probabilities: np.ndarray, truth: np.ndarray, count: int, rng: np.random.Generator,
                  ignore: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `count` pixels of one image drawn without replacement, skipping `ignore` labels: ((n, C), (n,)), so
    that a temperature is fitted on a bounded sample of every validation image."""
    flat_truth = truth.reshape(-1)
    usable = np.flatnonzero(flat_truth != ignore)
    chosen = usable if usable.size <= count else rng.choice(usable, count, replace=False)
    return probabilities.reshape(-1, probabilities.shape[-1])[chosen], flat_truth[chosen].astype(np.int64)


def reliability(probabilities: np.ndarray, outcomes: np.ndarray, bins: int = 10) -> dict[str, np.ndarray]:
    """Predicted probability against observed frequency in equal-width bins: {"predicted", "observed", "count"}
    (NaN for an empty bin), and the expected calibration error {"ece"} weighted by bin counts."""
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    outcomes = np.asarray(outcomes, dtype=np.float64).reshape(-1)
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(index, probabilities, minlength=bins) / count
        observed = np.bincount(index, outcomes, minlength=bins) / count
    filled = count > 0
    ece = float((np.abs(predicted - observed)[filled] * count[filled]).sum() / max(count.sum(), 1))
    return {"predicted": predicted, "observed": observed, "count": count, "ece": ece}
