import numpy as np
import pytest

from voc_pipeline.core.joint import JointRule, apply_joint_rule, choose_joint_rule, class_area_fractions


def test_area_fractions_count_each_class():
    label_map = np.zeros((4, 5), np.uint8)
    label_map[0, :2] = 3
    label_map[1:, 4] = 20
    fractions = class_area_fractions([label_map])
    assert fractions[0, 2] == pytest.approx(2 / 20) and fractions[0, 19] == pytest.approx(3 / 20)
    assert fractions.sum() == pytest.approx(5 / 20)


def test_add_rule_flags_classes_with_enough_area():
    flags = np.zeros((1, 20), np.int8)
    flags[0, 0] = 1
    label_map = np.zeros((10, 10), np.uint8)
    label_map[:2] = 5  # 20% of the image
    label_map[9, 9] = 6  # 1%
    new_flags, maps = apply_joint_rule(flags, [label_map], JointRule(add_area_fraction=0.05))
    assert np.flatnonzero(new_flags[0]).tolist() == [0, 4]
    assert maps[0] is label_map and flags[0].sum() == 1, "inputs are left alone"


def test_remove_rule_clears_pixels_of_rejected_classes():
    flags = np.zeros((1, 20), np.int8)
    flags[0, 4] = 1
    label_map = np.array([[5, 6], [0, 20]], np.uint8)
    _, maps = apply_joint_rule(flags, [label_map], JointRule(remove_rejected_pixels=True))
    np.testing.assert_array_equal(maps[0], [[5, 0], [0, 0]])


def test_choice_prefers_independent_heads_on_ties_and_finds_a_helpful_rule():
    truth_map = np.zeros((10, 10), np.uint8)
    truth_map[:5] = 3
    true_labels = np.zeros((1, 20), np.int8)
    true_labels[0, 2] = 1
    # Perfect predictions: every rule scores 1, so independent heads wins the tie.
    rule, table = choose_joint_rule(true_labels, [truth_map], true_labels, [truth_map], [0.1])
    assert rule == JointRule() and table[0]["name"] == "independent heads"
    # The classifier missed class 3 but the segmenter found it: adding from masks helps.
    missed = np.zeros((1, 20), np.int8)
    missed[0, 7] = 1
    rule, table = choose_joint_rule(missed, [truth_map], true_labels, [truth_map], [0.1, 0.6])
    assert rule == JointRule(add_area_fraction=0.1, remove_rejected_pixels=False)
    assert max(row["score"] for row in table) > table[0]["score"]
