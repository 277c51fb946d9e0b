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

from voc_pipeline.core.probability import logit, sigmoid
from voc_pipeline.core.scoring import classification_row_scores
from voc_pipeline.core.selection import choose_within_noise, cross_validated_rows

FEATURES = ("classifier logit", "segmenter largest probability", "segmenter area share")


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


@dataclass(frozen=True)
class FusionComparison:
    """Fused evidence against the classifier alone, each with its flag strategy fitted on one half of the
    validation images and scored on the other (core.selection), as per-image rows."""

    classifier_rows: np.ndarray
    fused_rows: np.ndarray

    @property
    def classifier_cross_validated(self) -> float:
        return float(np.mean(self.classifier_rows)) if len(self.classifier_rows) else float("nan")

    @property
    def fused_cross_validated(self) -> float:
        return float(np.mean(self.fused_rows)) if len(self.fused_rows) else float("nan")

    @property
    def use_fusion(self) -> bool:
        """Fusion is kept only when it wins by more than the noise of the estimate (one standard error of the
        paired difference); a tie, or a score that cannot be computed, keeps the simpler answer."""
        if not (np.isfinite(self.classifier_rows).all() and np.isfinite(self.fused_rows).all()) or \
                not len(self.fused_rows):
            return False
        return choose_within_noise(np.stack([self.classifier_rows, self.fused_rows])) == 1

    def to_dict(self) -> dict:
        """JSON-ready; a score that could not be computed (fewer than two images) is None."""
        return {"classifier_cross_validated": finite_or_none(self.classifier_cross_validated),
                "fused_cross_validated": finite_or_none(self.fused_cross_validated),
                "chosen": "fused" if self.use_fusion else "classifier"}


def finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def compare_fusion(classifier_probabilities: np.ndarray, largest: np.ndarray, area: np.ndarray, labels: np.ndarray,
                   fit_flags, seed: int, repeats: int = 3) -> FusionComparison:
    """Cross-validated classification rows of the classifier alone and of fused evidence, all (N, C) inputs.

    Args:
        fit_flags: (probabilities, labels) -> an object whose .flags(probabilities) gives 0/1 flags: the flag
            strategy chosen for the classifier (core.thresholds.flag_fitter).
        seed: the seed of the first split into halves (the same splits for both candidates).
    """

    def classifier_alone(fit_half: np.ndarray, score_half: np.ndarray) -> np.ndarray:
        fitted = fit_flags(classifier_probabilities[fit_half], labels[fit_half])
        return classification_row_scores(fitted.flags(classifier_probabilities[score_half]), labels[score_half])

    def fused(fit_half: np.ndarray, score_half: np.ndarray) -> np.ndarray:
        model = fit_fusion(classifier_probabilities[fit_half], largest[fit_half], area[fit_half], labels[fit_half])
        probabilities = model.probabilities(classifier_probabilities, largest, area)
        fitted = fit_flags(probabilities[fit_half], labels[fit_half])
        return classification_row_scores(fitted.flags(probabilities[score_half]), labels[score_half])

    count = len(labels)
    return FusionComparison(cross_validated_rows(classifier_alone, count, seed, repeats),
                            cross_validated_rows(fused, count, seed, repeats))
