"""Fused image-level evidence: the classifier's probability and the segmenter's evidence for each class,
combined by one small logistic model fitted on validation (pure NumPy, no I/O).

Features of (image, class): the classifier's logit, the segmenter's largest pixel probability for the
class, and the share of the image it paints with it. One model serves every class (20 times more
examples than a model per class, which a few hundred validation images could not support), so its
three weights say how much each kind of evidence counts. Whether fusion is used at all is decided by
cross-validation against the classifier alone, as for the threshold strategies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPSILON = 1e-6
FEATURES = ("classifier logit", "segmenter largest probability", "segmenter area share")


def logit(probabilities: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1 - EPSILON)
    return np.log(clipped / (1 - clipped))


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * values))


def features(classifier_probabilities: np.ndarray, largest: np.ndarray, area: np.ndarray) -> np.ndarray:
    """(N, C, 3) features of every (image, class), all (N, C) inputs."""
    return np.stack([logit(classifier_probabilities), np.asarray(largest, np.float64), np.asarray(area, np.float64)], -1)


@dataclass(frozen=True)
class FusionModel:
    """probability = sigmoid(weights . features + bias), the same for every class."""

    weights: tuple[float, float, float]
    bias: float

    def probabilities(self, classifier_probabilities: np.ndarray, largest: np.ndarray, area: np.ndarray) -> np.ndarray:
        return sigmoid(features(classifier_probabilities, largest, area) @ np.asarray(self.weights) + self.bias)

    def to_dict(self) -> dict:
        return {"weights": dict(zip(FEATURES, self.weights)), "bias": self.bias}

    @classmethod
    def from_dict(cls, payload: dict) -> FusionModel:
        return cls(tuple(float(payload["weights"][name]) for name in FEATURES), float(payload["bias"]))


def fit_fusion(classifier_probabilities: np.ndarray, largest: np.ndarray, area: np.ndarray, labels: np.ndarray,
               l2: float = 1.0, iterations: int = 50) -> FusionModel:
    """Logistic regression by Newton's method with an L2 penalty on the weights (not the bias).

    Deterministic (no random start), converges in a handful of steps for three features.
    """
    inputs = features(classifier_probabilities, largest, area).reshape(-1, len(FEATURES))
    design = np.hstack([inputs, np.ones((len(inputs), 1))])
    targets = np.asarray(labels, dtype=np.float64).reshape(-1)
    penalty = np.diag([l2] * len(FEATURES) + [0.0])
    parameters = np.zeros(design.shape[1])
    for _ in range(iterations):
        predicted = sigmoid(design @ parameters)
        gradient = design.T @ (predicted - targets) + penalty @ parameters
        hessian = (design * (predicted * (1 - predicted))[:, None]).T @ design + penalty + 1e-9 * np.eye(design.shape[1])
        step = np.linalg.solve(hessian, gradient)
        parameters -= step
        if np.abs(step).max() < 1e-8:
            break
    return FusionModel(tuple(float(value) for value in parameters[:-1]), float(parameters[-1]))
