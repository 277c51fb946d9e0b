"""The joint decision between the classification and segmentation heads (pure NumPy, no I/O).

The two heads are trained apart and can disagree: the segmenter paints a class the classifier rejects,
or the classifier accepts a class the segmenter never paints. Two simple rules reconcile them, and which
ones to use (and the area threshold) is chosen on the validation split by the competition score:
- add: a class whose predicted mask covers at least `add_area_fraction` of the image joins the flags;
- remove: pixels of a class that is not among the final flags become background.
"Independent heads" (neither rule) is always a candidate and wins ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from voc_pipeline.core.classes import NUM_CLASSES
from voc_pipeline.core.scoring import classification_row_scores, competition_score, segmentation_row_scores


@dataclass(frozen=True)
class JointRule:
    """add_area_fraction: None never adds classes from masks; remove_rejected_pixels: clear pixels of unflagged classes."""

    add_area_fraction: float | None = None
    remove_rejected_pixels: bool = False

    @property
    def name(self) -> str:
        parts = []
        if self.add_area_fraction is not None:
            parts.append(f"add classes covering >= {self.add_area_fraction:g} of the image")
        if self.remove_rejected_pixels:
            parts.append("remove pixels of rejected classes")
        return "; ".join(parts) or "independent heads"

    def to_dict(self) -> dict:
        return {**asdict(self), "name": self.name}


def class_area_fractions(label_maps: Sequence[np.ndarray], num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(N, num_classes) share of each image's pixels predicted as each class."""
    fractions = np.zeros((len(label_maps), num_classes))
    for row, label_map in enumerate(label_maps):
        counts = np.bincount(label_map.ravel(), minlength=num_classes + 1)[1:num_classes + 1]
        fractions[row] = counts / max(label_map.size, 1)
    return fractions


def apply_joint_rule(flags: np.ndarray, label_maps: Sequence[np.ndarray], rule: JointRule) -> tuple[np.ndarray, list[np.ndarray]]:
    """(flags, label maps) after the rule; the inputs are not modified."""
    flags = np.asarray(flags).astype(np.int8).copy()
    if rule.add_area_fraction is not None:
        flags |= (class_area_fractions(label_maps, flags.shape[1]) >= rule.add_area_fraction).astype(np.int8)
    if not rule.remove_rejected_pixels:
        return flags, list(label_maps)
    kept_maps = []
    for image_flags, label_map in zip(flags, label_maps):
        allowed = np.concatenate([[True], image_flags.astype(bool), np.zeros(256 - 1 - len(image_flags), bool)])
        kept_maps.append(np.where(allowed[label_map], label_map, 0).astype(np.uint8))
    return flags, kept_maps


def score_predictions(flags: np.ndarray, label_maps: Sequence[np.ndarray], true_labels: np.ndarray,
                      true_maps: Sequence[np.ndarray]) -> dict[str, float]:
    """The competition score of predicted flags and maps against the truth."""
    return competition_score(classification_row_scores(flags, true_labels), segmentation_row_scores(label_maps, true_maps))


def candidate_rules(area_grid: Sequence[float]) -> list[JointRule]:
    """Independent heads first, then every combination of the add and remove rules."""
    candidates = [JointRule()]
    for area in (None, *area_grid):
        for remove in (False, True):
            rule = JointRule(area, remove)
            if rule != JointRule():
                candidates.append(rule)
    return candidates


def choose_joint_rule(flags: np.ndarray, label_maps: Sequence[np.ndarray], true_labels: np.ndarray,
                      true_maps: Sequence[np.ndarray], area_grid: Sequence[float]) -> tuple[JointRule, list[dict]]:
    """The candidate with the highest competition score (the first on ties) and every candidate's scores."""
    table = []
    for rule in candidate_rules(area_grid):
        rule_flags, rule_maps = apply_joint_rule(flags, label_maps, rule)
        table.append({**rule.to_dict(), **score_predictions(rule_flags, rule_maps, true_labels, true_maps)})
    best = max(range(len(table)), key=lambda index: (table[index]["score"], -index))
    return candidate_rules(area_grid)[best], table
