import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from voc_pipeline.thresholds import (
    DEFAULT_THRESHOLD,
    apply_thresholds,
    best_global_threshold,
    class_scores_over_grid,
    mean_image_f1,
    tune_thresholds,
)


def test_apply_thresholds_gives_every_image_its_most_probable_class():
    probabilities = np.array([[0.2, 0.4, 0.1], [0.9, 0.8, 0.1], [0.1, 0.1, 0.3]])
    flags = apply_thresholds(probabilities, [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(flags, [[0, 1, 0], [1, 1, 0], [0, 0, 1]])


def test_grid_scores_match_direct_scoring():
    rng = np.random.default_rng(0)
    probabilities = rng.random((30, 5))
    labels = (rng.random((30, 5)) < 0.3).astype(np.int8)
    thresholds = rng.uniform(0.3, 0.7, size=5)
    grid = np.linspace(0.05, 0.95, 19)
    for class_index in range(5):
        vectorised = class_scores_over_grid(probabilities, labels, thresholds, class_index, grid)
        direct = []
        for value in grid:
            candidate = thresholds.copy()
            candidate[class_index] = value
            direct.append(mean_image_f1(probabilities, labels, candidate))
        np.testing.assert_allclose(vectorised, direct)


def test_tuner_finds_a_known_optimum():
    # Class 0's positives score 0.30-0.39 and its negatives 0.10-0.19: any threshold in (0.19, 0.30] is
    # perfect, 0.5 misses them all. Class 1 is separable around 0.8; class 2 around 0.55.
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=(60, 3)).astype(np.int8)
    labels[labels.sum(1) == 0, 0] = 1
    low = [(0.10, 0.19), (0.60, 0.75), (0.40, 0.50)]
    high = [(0.30, 0.39), (0.82, 0.95), (0.60, 0.70)]
    probabilities = np.empty((60, 3))
    for class_index in range(3):
        positives = labels[:, class_index] == 1
        probabilities[positives, class_index] = rng.uniform(*high[class_index], size=positives.sum())
        probabilities[~positives, class_index] = rng.uniform(*low[class_index], size=(~positives).sum())
    thresholds, untunable = tune_thresholds(probabilities, labels)
    assert untunable == []
    assert mean_image_f1(probabilities, labels, thresholds) == pytest.approx(1.0)
    for class_index in range(3):
        positives = labels[:, class_index] == 1
        highest_negative = probabilities[~positives, class_index].max()
        lowest_positive = probabilities[positives, class_index].min()
        assert highest_negative < thresholds[class_index] <= lowest_positive
    assert mean_image_f1(probabilities, labels, 0.5) < 0.9


def test_tuned_is_never_worse_than_global_and_global_never_worse_than_half():
    rng = np.random.default_rng(2)
    labels = (rng.random((80, 20)) < 0.1).astype(np.int8)
    probabilities = np.clip(labels * 0.3 + rng.random((80, 20)) * 0.6, 0, 1)
    _, global_score = best_global_threshold(probabilities, labels)
    thresholds, _ = tune_thresholds(probabilities, labels)
    assert mean_image_f1(probabilities, labels, thresholds) >= global_score >= mean_image_f1(probabilities, labels, 0.5)


def test_class_without_positives_keeps_the_default():
    rng = np.random.default_rng(3)
    labels = (rng.random((40, 4)) < 0.4).astype(np.int8)
    labels[:, 2] = 0
    thresholds, untunable = tune_thresholds(rng.random((40, 4)), labels)
    assert untunable == [2] and thresholds[2] == DEFAULT_THRESHOLD


def test_tuner_refuses_nan_and_mismatched_shapes():
    with pytest.raises(ValueError, match="NaN"):
        tune_thresholds(np.full((3, 2), np.nan), np.ones((3, 2)))
    with pytest.raises(ValueError, match="equal"):
        tune_thresholds(np.zeros((3, 2)), np.ones((3, 3)))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 6)), elements=st.floats(0, 1)),
       st.floats(0.01, 0.99))
def test_no_image_is_ever_left_without_a_class(probabilities, threshold):
    assert (apply_thresholds(probabilities, threshold).sum(1) >= 1).all()
