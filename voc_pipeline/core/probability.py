"""Probabilities and log-odds (pure NumPy): the one home of the logistic function and its inverse."""

from __future__ import annotations

import numpy as np

# Probabilities are clipped this far from 0 and 1 before taking log-odds, so a sure model gives finite logits.
EPSILON = 1e-6


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The logistic function in float64, in a form that never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=np.float64)))


def logit(probabilities: np.ndarray) -> np.ndarray:
    """The log-odds of probabilities clipped into [EPSILON, 1 - EPSILON]."""
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1 - EPSILON)
    return np.log(clipped / (1 - clipped))
