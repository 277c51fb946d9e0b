"""Fused image-level evidence: the classifier's probability and the segmenter's evidence for each class,
combined by one small logistic model fitted on validation (pure NumPy, no I/O).

Features of (image, class): the classifier's logit, the segmenter's largest pixel probability for the
class, and the share of the image it paints with it. One model serves every class (20 times more
examples than a model per class, which a few hundred validation images could not support), so its
three weights say how much each kind of evidence counts. Which source the flags come from (the classifier
alone, the segmenter's class presences, or fused evidence) is decided by cross-validation, as for the
threshold strategies, the simplest within the noise of the best.
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


# The flags' sources `tune` compares, simplest first: the classifier alone, the segmenter's class presences
# (core.presence) and fused evidence (both heads).
FLAG_SOURCES = ("classifier", "presence", "fused")
SOURCE_TITLES = {"classifier": "classifier alone", "presence": "segmenter presence", "fused": "fused evidence"}


@dataclass(frozen=True)
class SourceComparison:
    """The flags' candidate sources, each with its flag strategy fitted on one half of the validation images and
    scored on the other (core.selection), as per-image rows.

    Attributes:
        rows: source name -> (N,) cross-validated classification rows, in FLAG_SOURCES order.
    """

    rows: dict[str, np.ndarray]

    def cross_validated(self, source: str) -> float:
        rows = self.rows[source]
        return float(np.mean(rows)) if len(rows) else float("nan")

    @property
    def chosen(self) -> str:
        """The simplest source within the noise of the best (one standard error of the paired difference); a tie,
        or a score that cannot be computed, keeps the classifier."""
        names = list(self.rows)
        stacked = np.stack([self.rows[name] for name in names])
        if len(names) == 1 or not stacked.shape[1] or not np.isfinite(stacked).all():
            return names[0]
        return names[choose_within_noise(stacked)]

    def to_dict(self) -> dict:
        """JSON-ready: `<source>_cross_validated` for each source tried (None where it could not be computed, with
        fewer than two images), and the chosen source."""
        return {**{f"{name}_cross_validated": finite_or_none(self.cross_validated(name)) for name in self.rows},
                "chosen": self.chosen}


def finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def compare_flag_sources(classifier_probabilities: np.ndarray, largest: np.ndarray, area: np.ndarray,
                         presence: np.ndarray, labels: np.ndarray, fit_flags, seed: int,
                         sources: tuple[str, ...] = FLAG_SOURCES, repeats: int = 3) -> SourceComparison:
    """Cross-validated classification rows of each source, all (N, C) inputs.

    Args:
        presence: the segmenter's class presences (core.presence).
        fit_flags: (probabilities, labels) -> an object whose .flags(probabilities) gives 0/1 flags: the flag
            strategy chosen for the classifier (core.thresholds.flag_fitter).
        seed: the seed of the first split into halves (the same splits for every source).
        sources: the sources to compare, the classifier first.
    """
    unknown = [name for name in sources if name not in FLAG_SOURCES]
    if unknown or sources[:1] != ("classifier",):
        raise ValueError(f"flag sources {sources}: expected the classifier first, then some of {FLAG_SOURCES[1:]}")

    def fixed(probabilities: np.ndarray):
        def fit_and_score(fit_half: np.ndarray, score_half: np.ndarray) -> np.ndarray:
            fitted = fit_flags(probabilities[fit_half], labels[fit_half])
            return classification_row_scores(fitted.flags(probabilities[score_half]), labels[score_half])
        return fit_and_score

    def fused(fit_half: np.ndarray, score_half: np.ndarray) -> np.ndarray:
        model = fit_fusion(classifier_probabilities[fit_half], largest[fit_half], area[fit_half], labels[fit_half])
        return fixed(model.probabilities(classifier_probabilities, largest, area))(fit_half, score_half)

    candidates = {"classifier": fixed(classifier_probabilities), "presence": fixed(presence), "fused": fused}
    return SourceComparison({name: cross_validated_rows(candidates[name], len(labels), seed, repeats)
                             for name in FLAG_SOURCES if name in sources})
