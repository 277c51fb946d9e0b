import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from voc_pipeline.core.rle import rle_decode, rle_encode
from voc_pipeline.core.scoring import (
    EMPTY_AGAINST_EMPTY,
    classification_row_scores,
    competition_score,
    confusion_matrix,
    dice_from_counts,
    iou_per_class,
    mean_iou,
    rle_row_dice,
    run_intersection_length,
    segmentation_row_score,
)


def independent_dice(predicted, truth):
    """Dice written out directly on 0/1 vectors, for comparison."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    if predicted.sum() + truth.sum() == 0:
        return 1.0
    return 2 * np.logical_and(predicted, truth).sum() / (predicted.sum() + truth.sum())


@pytest.mark.parametrize(
    ("intersection", "predicted", "truth", "expected"),
    [(1, 2, 1, 2 / 3), (0, 0, 0, EMPTY_AGAINST_EMPTY), (0, 3, 0, 0.0), (0, 0, 4, 0.0), (5, 5, 5, 1.0)],
)
def test_dice_from_counts(intersection, predicted, truth, expected):
    assert float(dice_from_counts(intersection, predicted, truth)) == pytest.approx(expected)


def test_classification_rows_are_per_image_f1():
    predicted = np.zeros((3, 20), dtype=np.int8)
    truth = np.zeros((3, 20), dtype=np.int8)
    predicted[0, [0, 1]] = 1
    truth[0, 0] = 1  # 2*1 / (2 + 1)
    predicted[1, 5] = 1
    truth[1, 6] = 1  # disjoint
    truth[2, 3] = 1  # empty prediction
    np.testing.assert_allclose(classification_row_scores(predicted, truth), [2 / 3, 0.0, 0.0])


def test_segmentation_row_needs_same_class_and_ignores_background():
    truth = np.array([[0, 1, 1], [2, 2, 0]])
    predicted = np.array([[0, 1, 2], [2, 0, 0]])
    # Foreground: truth 4 pixels, prediction 3; same class at (0,1) and (1,0) -> 2*2/(3+4).
    assert segmentation_row_score(predicted, truth) == pytest.approx(4 / 7)
    assert segmentation_row_score(np.zeros((2, 2)), np.zeros((2, 2))) == EMPTY_AGAINST_EMPTY
    assert segmentation_row_score(np.zeros((2, 2)), np.ones((2, 2))) == 0.0


def test_segmentation_row_equals_dice_of_the_stacked_masks():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 21, size=(7, 9))
    predicted = rng.integers(0, 21, size=(7, 9))
    stack = lambda label_map: np.stack([label_map == k for k in range(1, 21)])  # noqa: E731
    assert segmentation_row_score(predicted, truth) == pytest.approx(independent_dice(stack(predicted), stack(truth)))


def test_competition_score_is_mean_over_all_rows():
    result = competition_score(np.array([1.0, 0.5]), np.array([0.0, 0.5]))
    assert result == {"score": 0.5, "classification": 0.75, "segmentation": 0.25}


def test_run_intersection_hand_computed():
    # Runs [1,4) and [6,9) against [3,7): overlap {3} and {6} -> 2 positions.
    assert run_intersection_length(np.array([1, 6]), np.array([3, 3]), np.array([3]), np.array([4])) == 2
    assert run_intersection_length(np.array([], np.int64), np.array([], np.int64), np.array([3]), np.array([4])) == 0


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 40).flatmap(lambda n: st.tuples(
    arrays(np.uint8, n, elements=st.integers(0, 1)), arrays(np.uint8, n, elements=st.integers(0, 1)))))
def test_rle_row_dice_agrees_with_an_independent_dice(pair):
    predicted, truth = pair
    assert rle_row_dice(rle_encode(predicted), rle_encode(truth)) == pytest.approx(independent_dice(predicted, truth))
    np.testing.assert_array_equal(rle_decode(rle_encode(truth), truth.size), truth)


def test_confusion_and_iou_hand_computed():
    truth = np.array([0, 0, 1, 1, 255])
    predicted = np.array([0, 1, 1, 1, 2])
    confusion = confusion_matrix(predicted, truth, num_labels=3)
    np.testing.assert_array_equal(confusion, [[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    iou = iou_per_class(confusion)
    assert iou[0] == pytest.approx(1 / 2) and iou[1] == pytest.approx(2 / 3) and np.isnan(iou[2])
    assert mean_iou(confusion) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_confusion_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix(np.array([3]), np.array([0]), num_labels=3)
