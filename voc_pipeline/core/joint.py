"""The joint decision between the classification and segmentation heads (pure NumPy, no I/O).

The two heads are trained apart and can disagree. A joint rule decides, per image, the final flags and
the label map from the tuned flags and the segmenter's per-pixel probabilities:
- flags: the tuned flags, plus (optionally) every class the segmenter paints over at least
  `add_area_fraction` of the image;
- mask: one of the mask rules of voc_pipeline.core.masks, given those flags;
- fallback (optionally): an accepted class whose mask is empty or tiny gets its typical training box.
Every combination is a candidate, scored on validation by the competition score; "independent heads"
(the tuned flags and the segmenter's own argmax) comes first and wins ties. One more rule stands apart: the
trivial answer (the training part's most frequent class, with a centre box), which `tune` falls back to
when it beats the chosen rule's honest estimate (`trivial_wins`), so that an answer is never worse than it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from voc_pipeline.core.baseline import centre_box_map
from voc_pipeline.core.calibration import calibrate_sigmoid
from voc_pipeline.core.classes import CLASS_NAMES, NUM_CLASSES
from voc_pipeline.core.expected import expected_f1_flags
from voc_pipeline.core.fusion import FLAG_SOURCES
from voc_pipeline.core.masks import MASK_RULES, class_evidence, fill_missing_classes, label_map
from voc_pipeline.core.presence import presence_scores
from voc_pipeline.core.scoring import (
    classification_row_scores,
    competition_score,
    confusion_matrix,
    segmentation_row_score,
    segmentation_row_scores,
)
from voc_pipeline.core.selection import choose_within_noise
from voc_pipeline.core.thresholds import apply_thresholds


@dataclass(frozen=True)
class JointRule:
    """How the final flags and label map of an image are made from the tuned flags and the probabilities."""

    add_area_fraction: float | None = None
    masks: str = "independent"
    fallback: bool = False
    trivial_class: int | None = None  # the trivial answer's class, instead of both heads' outputs

    @property
    def name(self) -> str:
        if self.trivial_class is not None:
            return f"the trivial answer ({CLASS_NAMES[self.trivial_class]} with a centre box, for every image)"
        parts = []
        if self.add_area_fraction is not None:
            parts.append(f"add classes covering >= {self.add_area_fraction:g} of the image")
        if self.masks != "independent":
            parts.append(f"{self.masks} masks")
        if self.fallback:
            parts.append("typical box for a missing accepted class")
        return "; ".join(parts) or "independent heads"

    def to_dict(self) -> dict:
        return {"add_area_fraction": self.add_area_fraction, "masks": self.masks, "fallback": self.fallback,
                "trivial_class": self.trivial_class, "name": self.name}

    @classmethod
    def from_dict(cls, payload: dict) -> JointRule:
        return cls(payload["add_area_fraction"], payload["masks"], bool(payload["fallback"]), payload.get("trivial_class"))


def candidate_rules(area_grid: Sequence[float]) -> list[JointRule]:
    """Independent heads first, then every combination of adding, mask rule and fallback."""
    candidates = [JointRule()]
    for area in (None, *area_grid):
        for masks in MASK_RULES:
            for fallback in (False, True):
                rule = JointRule(area, masks, fallback)
                if rule != JointRule():
                    candidates.append(rule)
    return candidates


def final_flags(base_flags: np.ndarray, area_share: np.ndarray, add_area_fraction: float | None) -> np.ndarray:
    """The tuned flags, plus the classes the segmenter paints over at least `add_area_fraction` of the image."""
    flags = np.asarray(base_flags).astype(np.int8)
    if add_area_fraction is None:
        return flags.copy()
    return flags | (np.asarray(area_share) >= add_area_fraction).astype(np.int8)


class ImageDecisions:
    """The outputs of every candidate rule for one image, each mask computed once per distinct flag set.

    `area_share` is the second half of `class_evidence(probabilities)`, which the caller has already
    computed for the tuned flags.
    """

    def __init__(self, probabilities: np.ndarray, base_flags: np.ndarray, area_share: np.ndarray, boxes: np.ndarray,
                 tiny_fraction: float, temperature: float = 1.0):
        self.probabilities, self.base_flags = probabilities, np.asarray(base_flags).astype(np.int8)
        self.area_share, self.boxes, self.tiny_fraction = area_share, boxes, tiny_fraction
        self.temperature = temperature
        self._masks: dict[tuple, np.ndarray] = {}

    def decide(self, rule: JointRule) -> tuple[np.ndarray, np.ndarray]:
        """(final flags (20,), uint8 label map) of this image under `rule`."""
        if rule.trivial_class is not None:
            flags = np.zeros(NUM_CLASSES, dtype=np.int8)
            flags[rule.trivial_class] = 1
            return flags, centre_box_map(*self.probabilities.shape[:2], rule.trivial_class)
        flags = final_flags(self.base_flags, self.area_share, rule.add_area_fraction)
        key = (rule.masks, rule.fallback, flags.tobytes() if rule.masks != "independent" or rule.fallback else b"")
        if key not in self._masks:
            labels = label_map(self.probabilities, flags, rule.masks, self.temperature)
            if rule.fallback:
                labels = fill_missing_classes(labels, flags, self.boxes, self.tiny_fraction)
            self._masks[key] = labels
        return flags, self._masks[key]


class RuleScores(NamedTuple):
    """What every candidate rule did on every validation image."""

    classification: np.ndarray  # (R, N) classification row scores
    segmentation: np.ndarray  # (R, N) segmentation row scores
    confusion: np.ndarray  # (R, 21, 21) pixel confusion matrices
    flag_counts: np.ndarray  # (R, N) classes flagged per image

    @property
    def rows(self) -> np.ndarray:
        """(R, N) each image's mean of its two rows: its share of the competition score."""
        return (self.classification + self.segmentation) / 2


def score_rules(maps: Iterable[np.ndarray], classifier_probabilities: np.ndarray, true_labels: np.ndarray,
                true_maps: Sequence[np.ndarray], plan: InferencePlan, rules: Sequence[JointRule]) -> RuleScores:
    """Every rule applied to every image, with the plan's flags, calibration and typical boxes.

    Args:
        maps: per image, the segmenter's (H, W, 21) probabilities (a generator keeps one image in memory).
        classifier_probabilities: (N, 20); true_labels (N, 20); true_maps: N label maps without void.
    """
    count = len(true_labels)
    classification, segmentation = np.zeros((len(rules), count)), np.zeros((len(rules), count))
    flag_counts = np.zeros((len(rules), count), dtype=np.int64)
    confusion = np.zeros((len(rules), NUM_CLASSES + 1, NUM_CLASSES + 1), dtype=np.int64)
    for image, probabilities in enumerate(maps):
        largest, area = class_evidence(probabilities)
        _, flags = plan.base_flags(classifier_probabilities[image], probabilities, largest, area)
        decisions = ImageDecisions(probabilities, flags, area, plan.boxes, plan.tiny_fraction, plan.segmenter_temperature)
        for index, rule in enumerate(rules):
            final, labels = decisions.decide(rule)
            classification[index, image] = classification_row_scores(final[None], true_labels[image][None])[0]
            segmentation[index, image] = segmentation_row_score(labels, true_maps[image])
            confusion[index] += confusion_matrix(labels, true_maps[image])
            flag_counts[index, image] = int(final.sum())
    return RuleScores(classification, segmentation, confusion, flag_counts)


def score_predictions(flags: np.ndarray, label_maps: Sequence[np.ndarray], true_labels: np.ndarray,
                      true_maps: Sequence[np.ndarray]) -> dict[str, float]:
    """The competition score of predicted flags and maps against the truth."""
    return competition_score(classification_row_scores(flags, true_labels), segmentation_row_scores(label_maps, true_maps))


def candidate_table(rules: Sequence[JointRule], classification: np.ndarray, segmentation: np.ndarray) -> list[dict]:
    """Each rule with its competition score on validation, from (R, N) classification and segmentation row scores."""
    return [{**rule.to_dict(), **competition_score(classification[index], segmentation[index])}
            for index, rule in enumerate(rules)]


def trivial_wins(honest_rows: np.ndarray, trivial_rows: np.ndarray) -> bool:
    """Whether the trivial answer's per-image rows beat, on average, the chosen rule's honest ones (the rule chosen
    and its flags fitted without the images scored): the answer then falls back to the trivial one."""
    return float(np.mean(trivial_rows)) > float(np.mean(honest_rows))


def choose_rule(rows: np.ndarray) -> int:
    """The rule to use, from (R, N) per-image competition rows: the simplest (independent heads come first) whose
    score is within the noise of the best one's (core.selection.choose_within_noise)."""
    return choose_within_noise(rows)


@dataclass(frozen=True)
class InferencePlan:
    """Everything `tune` chose, applied to one image at a time by `tune` on validation and `predict` on test.

    Attributes:
        thresholds: (20,) thresholds on the flags' source probabilities.
        fusion: the model fusing the classifier with the segmenter's evidence (source "fused"), else None.
        rule: the joint rule.
        scales: the segmenter's scales.
        boxes: (20, 4) typical boxes of the classes, for the fallback.
        tiny_fraction: the mask share under which an accepted class counts as missing.
        flag_strategy: "global" or "per-class" (flags = thresholds), or "expected-f1" (each image's expected-F1
            set under its source probabilities calibrated by classifier_temperature).
        classifier_temperature, segmenter_temperature: the heads' calibrations (core.calibration).
        source: where the flags' probabilities come from (core.fusion.FLAG_SOURCES): the classifier, the
            segmenter's class presences (core.presence), or fused evidence.
    """

    thresholds: np.ndarray
    fusion: object | None
    rule: JointRule
    scales: tuple[float, ...]
    boxes: np.ndarray
    tiny_fraction: float
    flag_strategy: str = "global"
    classifier_temperature: float = 1.0
    segmenter_temperature: float = 1.0
    source: str = "classifier"

    def __post_init__(self):
        if self.source not in FLAG_SOURCES or (self.source == "fused") != (self.fusion is not None):
            raise ValueError(f"flag source {self.source!r} with fusion {self.fusion}: expected one of {FLAG_SOURCES}, "
                             f"with a fusion model exactly for 'fused'")

    def base_flags(self, classifier_probabilities: np.ndarray, probabilities: np.ndarray, largest: np.ndarray,
                   area: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the flags' source probabilities, the tuned flags) of one image, all (20,), from its classifier
        probabilities, its (H, W, 21) segmenter probabilities and their class_evidence."""
        if self.source == "presence":
            source = presence_scores(probabilities)
        elif self.source == "fused":
            source = self.fusion.probabilities(classifier_probabilities[None], largest[None], area[None])[0]
        else:
            source = classifier_probabilities
        if self.flag_strategy == "expected-f1":
            return source, expected_f1_flags(calibrate_sigmoid(source[None], self.classifier_temperature))[0]
        return source, apply_thresholds(source[None], self.thresholds)[0]

    def decide(self, probabilities: np.ndarray, classifier_probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(source probabilities, final flags, uint8 label map) of one image from its (H, W, 21) probabilities."""
        largest, area = class_evidence(probabilities)
        source, flags = self.base_flags(classifier_probabilities, probabilities, largest, area)
        final, labels = ImageDecisions(probabilities, flags, area, self.boxes, self.tiny_fraction,
                                       self.segmenter_temperature).decide(self.rule)
        return source, final, labels
