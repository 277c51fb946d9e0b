"""The joint decision, the mask rules, the box fallback and fused evidence (pure NumPy)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from voc_pipeline.core.fusion import FusionModel, fit_fusion
from voc_pipeline.core.joint import (
    ImageDecisions,
    InferencePlan,
    JointRule,
    candidate_rules,
    final_flags,
)
from voc_pipeline.core.masks import MASK_RULES, class_evidence, fill_missing_classes, label_map, typical_boxes


def probabilities_of(*planes: np.ndarray) -> np.ndarray:
    """(H, W, 21) probabilities with the given planes for labels 0, 1, ... and zeros for the rest."""
    stacked = np.zeros((*planes[0].shape, 21))
    for index, plane in enumerate(planes):
        stacked[..., index] = plane
    return stacked


def accepted(*classes: int) -> np.ndarray:
    flags = np.zeros(20, np.int8)
    flags[[index - 1 for index in classes]] = 1
    return flags


# A 1 x 4 image: background, class 1, class 2 and a pixel where class 2 narrowly beats background.
BACKGROUND = np.array([[0.9, 0.2, 0.1, 0.40]])
CLASS_1 = np.array([[0.05, 0.7, 0.3, 0.25]])
CLASS_2 = np.array([[0.05, 0.1, 0.6, 0.35]])
EXAMPLE = probabilities_of(BACKGROUND, CLASS_1, CLASS_2)


@pytest.mark.parametrize(("rule", "flags", "expected"), [
    ("independent", accepted(1), [[0, 1, 2, 0]]),
    ("remove-rejected", accepted(1), [[0, 1, 0, 0]]),
    ("guided", accepted(1), [[0, 1, 1, 0]]),          # class 2 is not accepted: its pixels go to class 1 where it beats background
    ("two-step", accepted(1), [[0, 1, 1, 1]]),        # background below 0.5 at pixels 1..3: all foreground, class 1
    ("two-step", accepted(2), [[0, 2, 2, 2]]),
    ("guided", accepted(1, 2), [[0, 1, 2, 0]]),
])
def test_each_mask_rule(rule, flags, expected):
    np.testing.assert_array_equal(label_map(EXAMPLE, flags, rule), expected)


def test_two_step_without_accepted_classes_is_all_background():
    assert not label_map(EXAMPLE, np.zeros(20), "two-step").any()


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown mask rule 'magic'"):
        label_map(EXAMPLE, accepted(1), "magic")


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, (3, 4, 21), elements=st.floats(0, 1)), arrays(np.int8, 20, elements=st.integers(0, 1)))
def test_every_rule_paints_only_accepted_classes_except_independent(raw, flags):
    probabilities = raw / np.maximum(raw.sum(-1, keepdims=True), 1e-9)
    allowed = {0, *(np.flatnonzero(flags) + 1)}
    for rule in MASK_RULES:
        labels = label_map(probabilities, flags, rule)
        assert labels.shape == (3, 4) and labels.dtype == np.uint8
        if rule != "independent":
            assert set(np.unique(labels)) <= allowed, rule
    assert (label_map(probabilities, np.ones(20), "guided") == probabilities.argmax(-1)).all()


def test_evidence_is_the_largest_probability_and_the_painted_share():
    largest, area = class_evidence(EXAMPLE)
    assert largest[0] == 0.7 and largest[1] == 0.6 and largest[5] == 0
    assert area[0] == 0.25 and area[1] == 0.25 and area.sum() == 0.5


def test_typical_boxes_are_medians_of_the_training_masks():
    masks = [np.zeros((10, 10), np.uint8) for _ in range(3)]
    masks[0][2:4, 2:6] = 7
    masks[1][2:6, 2:6] = 7
    masks[2][0:10, 0:10] = 7
    boxes = typical_boxes(masks)
    np.testing.assert_allclose(boxes[6], [0.2, 0.2, 0.6, 0.6])
    np.testing.assert_allclose(boxes[0], [0.25, 0.25, 0.75, 0.75])  # never seen: a centred half-size box


def test_fallback_paints_missing_accepted_classes_on_background_only():
    labels = np.zeros((10, 10), np.uint8)
    labels[0, 0] = 3
    labels[5, 5] = 9
    boxes = np.tile([0.0, 0.0, 0.5, 0.5], (20, 1))
    boxes[3] = [0.5, 0.0, 1.0, 0.5]  # class 4 lives in the bottom-left quarter
    filled = fill_missing_classes(labels, accepted(3, 4), boxes, tiny_fraction=0.05)
    assert (filled[:5, :5] == 3).all(), "class 3 covers 1% < 5%: its box is painted"
    assert (filled[5:, :5] == 4).all() and (filled[:, 5:] == labels[:, 5:]).all()
    assert filled[5, 5] == 9 and labels.sum() == 12, "other pixels and the input are left alone"
    kept = fill_missing_classes(labels, accepted(9), boxes, tiny_fraction=0.01)
    np.testing.assert_array_equal(kept, labels)  # class 9 covers 1%: not tiny at 1%


def test_candidates_start_with_independent_heads_and_cover_every_combination():
    rules = candidate_rules([0.1, 0.2])
    assert rules[0] == JointRule() and rules[0].name == "independent heads"
    assert len(rules) == len(set(rules)) == 3 * len(MASK_RULES) * 2
    assert JointRule(0.2, "two-step", True) in rules
    assert JointRule.from_dict(JointRule(0.2, "guided", True).to_dict()) == JointRule(0.2, "guided", True)


def test_adding_classes_the_segmenter_paints():
    area = np.zeros(20)
    area[[4, 5]] = [0.2, 0.01]
    assert np.flatnonzero(final_flags(accepted(1), area, 0.05)).tolist() == [0, 4]
    assert np.flatnonzero(final_flags(accepted(1), area, None)).tolist() == [0]


def test_image_decisions_apply_flags_then_mask_rule_then_fallback():
    probabilities = probabilities_of(np.full((4, 4), 0.9), np.full((4, 4), 0.1))
    boxes = np.tile([0.0, 0.0, 0.5, 0.5], (20, 1))
    decisions = ImageDecisions(probabilities, accepted(2), class_evidence(probabilities)[1], boxes, tiny_fraction=0.1)
    flags, labels = decisions.decide(JointRule(None, "guided", False))
    assert np.flatnonzero(flags).tolist() == [1] and not labels.any()
    flags, labels = decisions.decide(JointRule(None, "guided", True))
    assert (labels[:2, :2] == 2).all() and labels.sum() == 8


def test_an_inference_plan_gives_the_same_answer_as_its_parts():
    probabilities = probabilities_of(np.array([[0.2, 0.8]]), np.array([[0.8, 0.2]]))
    classifier = np.full(20, 0.1)
    classifier[0] = 0.9
    plan = InferencePlan(np.full(20, 0.5), None, JointRule(None, "remove-rejected", False), (1.0,),
                         np.tile([0.0, 0.0, 1.0, 1.0], (20, 1)), 0.0)
    source, flags, labels = plan.decide(probabilities, classifier)
    np.testing.assert_array_equal(source, classifier)
    assert np.flatnonzero(flags).tolist() == [0]
    np.testing.assert_array_equal(labels, [[1, 0]])


def test_fusion_learns_which_evidence_to_trust():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 20)) < 0.1).astype(np.int8)
    classifier = np.clip(0.5 + rng.normal(0, 0.25, labels.shape), 0.01, 0.99)  # no information
    largest = np.clip(0.2 + 0.6 * labels + rng.normal(0, 0.1, labels.shape), 0, 1)  # the segmenter knows
    area = np.clip(0.1 * labels + rng.normal(0, 0.02, labels.shape), 0, 1)
    model = fit_fusion(classifier, largest, area, labels)
    assert abs(model.weights[0]) < model.weights[1]
    fused = model.probabilities(classifier, largest, area)
    assert fused[labels == 1].mean() > 0.5 > fused[labels == 0].mean()
    assert FusionModel.from_dict(model.to_dict()) == model
    again = fit_fusion(classifier, largest, area, labels)
    assert again == model, "fitting is deterministic"


def test_the_trivial_rule_answers_the_most_frequent_class_with_a_centre_box_whatever_the_heads_say():
    from voc_pipeline.core.baseline import centre_box_map
    from voc_pipeline.core.joint import ImageDecisions, JointRule

    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(21), size=(30, 40)).astype(np.float32)
    decisions = ImageDecisions(probabilities, np.ones(20, np.int8), np.full(20, 0.5), np.tile([0.2, 0.2, 0.8, 0.8], (20, 1)),
                               0.002)
    rule = JointRule(trivial_class=14)
    flags, labels = decisions.decide(rule)
    assert flags.tolist() == [0] * 14 + [1] + [0] * 5
    np.testing.assert_array_equal(labels, centre_box_map(30, 40, 14))
    assert rule.name == "the trivial answer (person with a centre box, for every image)"
    assert JointRule.from_dict(rule.to_dict()) == rule
    assert JointRule.from_dict({"add_area_fraction": None, "masks": "independent", "fallback": False}) == JointRule()


def test_the_trivial_answer_wins_only_when_its_mean_row_is_above_the_honest_estimate():
    from voc_pipeline.core.joint import trivial_wins

    honest = np.array([0.3, 0.5, 0.4])
    assert trivial_wins(honest, np.array([0.5, 0.5, 0.5]))
    assert not trivial_wins(honest, np.array([0.4, 0.4, 0.4]))  # a tie keeps the models' answer
    assert not trivial_wins(honest, np.array([0.1, 0.2, 0.3]))
