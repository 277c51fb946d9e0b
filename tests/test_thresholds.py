import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from voc_pipeline.core.thresholds import (
    DEFAULT_THRESHOLD,
    apply_thresholds,
    best_global_threshold,
    class_scores_over_grid,
    compare_strategies,
    cross_validated_score,
    default_grid,
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


def separable_classes(num_images: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes whose positives sit above different cut-offs: 0.75 for class 0 and 0.25 for class 1."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((num_images, 2)) < 0.5).astype(np.int8)
    labels[labels.sum(1) == 0, 0] = 1
    probabilities = np.where(labels == 1, rng.uniform(0.8, 0.95, (num_images, 2)), rng.uniform(0.55, 0.7, (num_images, 2)))
    probabilities[:, 1] -= 0.5  # class 1 lives lower: positives 0.3..0.45, negatives 0.05..0.2
    return probabilities, labels


def test_cross_validated_score_of_fixed_thresholds_is_their_plain_score():
    rng = np.random.default_rng(3)
    probabilities, labels = rng.random((41, 4)), (rng.random((41, 4)) < 0.3).astype(np.int8)
    fixed = np.array([0.2, 0.4, 0.6, 0.8])
    assert cross_validated_score(probabilities, labels, lambda p, y: fixed, seed=1) == pytest.approx(
        mean_image_f1(probabilities, labels, fixed))
    assert np.isnan(cross_validated_score(probabilities[:1], labels[:1], lambda p, y: fixed, seed=1))


def test_cross_validated_score_scores_each_half_with_thresholds_chosen_on_the_other():
    probabilities, labels = separable_classes(40)
    seen = []

    def remember(chosen_probabilities, chosen_labels):
        seen.append(len(chosen_labels))
        return np.full(2, 0.5)

    cross_validated_score(probabilities, labels, remember, seed=0)
    assert seen == [20, 20]


def test_per_class_thresholds_win_when_the_classes_need_different_cut_offs():
    probabilities, labels = separable_classes(60)
    result = compare_strategies(probabilities, labels, default_grid(0.01), rounds=3, seed=0)
    assert result["chosen_strategy"] == "per-class"
    assert result["per_class"] == pytest.approx(1.0) and result["per_class_cross_validated"] > 0.95
    assert result["global"] < 1.0 and result["per_class_cross_validated"] > result["global_cross_validated"]
    assert 0.7 <= result["thresholds"][0] <= 0.8 and 0.2 <= result["thresholds"][1] <= 0.3
    assert result["threshold_0.5"] == pytest.approx(mean_image_f1(probabilities, labels, 0.5))
