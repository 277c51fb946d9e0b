"""Expected-score decisions and calibration, on arrays where the answer is known by construction."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voc_pipeline.core.calibration import (
    calibrate_sigmoid,
    calibrate_softmax,
    fit_sigmoid_temperature,
    fit_softmax_temperature,
    reliability,
)
from voc_pipeline.core.expected import (
    count_distributions,
    expected_dice_label_map,
    expected_f1,
    expected_f1_flags,
    expected_f1_of_top_k,
)
from voc_pipeline.core.probability import sigmoid
from voc_pipeline.core.scoring import classification_row_scores


def brute_force_expected_f1(flags: np.ndarray, probabilities: np.ndarray) -> float:
    """Sum over all 2^n truths of P(truth) * F1(flags, truth)."""
    total = 0.0
    for truth in itertools.product((0, 1), repeat=len(probabilities)):
        truth = np.array(truth)
        weight = np.prod(np.where(truth == 1, probabilities, 1 - probabilities))
        total += weight * classification_row_scores(flags[None], truth[None])[0]
    return total


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.integers(0, 10_000))
def test_the_exact_expected_f1_equals_brute_force_over_every_outcome(size, seed):
    rng = np.random.default_rng(seed)
    probabilities = rng.random(size)
    flags = (rng.random(size) < 0.5).astype(np.int8)
    assert expected_f1(flags[None], probabilities[None])[0] == pytest.approx(brute_force_expected_f1(flags, probabilities))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 7), st.integers(0, 10_000))
def test_the_best_top_k_set_is_the_best_of_all_non_empty_sets(size, seed):
    probabilities = np.random.default_rng(seed).random(size)
    flags = expected_f1_flags(probabilities[None])[0]
    best_any = max(brute_force_expected_f1(np.array(candidate), probabilities)
                   for candidate in itertools.product((0, 1), repeat=size) if any(candidate))
    assert brute_force_expected_f1(flags, probabilities) == pytest.approx(best_any)
    by_k = expected_f1_of_top_k(probabilities[None])[0]
    assert by_k.max() == pytest.approx(best_any) and flags.sum() >= 1


def test_count_distributions_are_poisson_binomial():
    distribution = count_distributions(np.array([[0.5, 0.5], [1.0, 0.0]]))
    np.testing.assert_allclose(distribution, [[0.25, 0.5, 0.25], [0.0, 1.0, 0.0]])


def test_a_sure_model_gets_its_confident_classes_back():
    probabilities = np.full((3, 20), 0.001)
    probabilities[0, 4] = probabilities[1, [2, 9]] = probabilities[2, 19] = 0.999
    expected = (probabilities > 0.5).astype(np.int8)
    np.testing.assert_array_equal(expected_f1_flags(probabilities), expected)


def test_hedging_pays_where_the_model_is_unsure():
    """Two classes at 0.45, one of which is surely present: flagging both beats flagging one."""
    probabilities = np.full((1, 20), 0.0)
    probabilities[0, [0, 1]] = 0.45
    flags = expected_f1_flags(probabilities)[0]
    assert flags.sum() == 2 and flags[0] == flags[1] == 1


def constructed_image():
    """A 4 x 4 image, background and class 3 only: the foreground probabilities are set per pixel."""
    foreground = np.array([[0.95, 0.9, 0.8, 0.6], [0.55, 0.45, 0.3, 0.2], [0.15, 0.1, 0.05, 0.05], [0.0] * 4])
    probabilities = np.zeros((4, 4, 21))
    probabilities[..., 3] = foreground
    probabilities[..., 0] = 1 - foreground
    accepted = np.zeros(20, dtype=np.int8)
    accepted[2] = 1
    return probabilities, accepted, foreground


def test_the_expected_dice_mask_keeps_exactly_the_pixels_above_half_the_optimum():
    probabilities, accepted, foreground = constructed_image()
    labels = expected_dice_label_map(probabilities, accepted)
    kept = labels == 3
    expected_truth = foreground.sum()
    order = np.sort(foreground.reshape(-1))[::-1]
    optimum = max(2 * order[:m].sum() / (m + expected_truth) for m in range(1, order.size + 1))
    np.testing.assert_array_equal(kept, foreground > optimum / 2)
    assert set(np.unique(labels)) <= {0, 3}
    # Here that threshold is about 0.34, below 0.5: the unsure 0.45 pixel is painted, which an argmax would not.
    assert kept[1, 1] and not (probabilities.argmax(-1) == 3)[1, 1]


def test_a_sure_segmenter_gets_its_argmax_back_from_the_expected_dice_rule():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (12, 15))
    probabilities = np.full((12, 15, 21), 1e-4)
    np.put_along_axis(probabilities, truth[..., None], 1.0, axis=-1)
    probabilities /= probabilities.sum(-1, keepdims=True)
    accepted = np.zeros(20, dtype=np.int8)
    accepted[[0, 1]] = 1
    np.testing.assert_array_equal(expected_dice_label_map(probabilities, accepted), truth)
    assert not expected_dice_label_map(probabilities, np.zeros(20)).any()


@pytest.mark.parametrize("planted", [0.5, 1.0, 2.5])
def test_the_classifier_temperature_recovers_a_planted_one(planted):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (4000, 20))
    labels = (rng.random(logits.shape) < sigmoid(logits)).astype(np.int8)  # calibrated at T = 1 ...
    shown = sigmoid(logits * planted)  # ... shown as if its logits were multiplied by the planted temperature
    assert fit_sigmoid_temperature(shown, labels) == pytest.approx(planted, rel=0.08)
    assert fit_sigmoid_temperature(shown, np.zeros_like(labels)) == 1.0


@pytest.mark.parametrize("planted", [0.6, 1.8])
def test_the_segmenter_temperature_recovers_a_planted_one(planted):
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (20000, 5))
    truth_probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in truth_probabilities])
    shown = np.exp(logits * planted) / np.exp(logits * planted).sum(1, keepdims=True)
    assert fit_softmax_temperature(shown, labels) == pytest.approx(planted, rel=0.08)
    np.testing.assert_allclose(calibrate_softmax(shown, planted), truth_probabilities, atol=1e-6)


def test_temperatures_keep_every_ranking():
    probabilities = np.random.default_rng(3).random((5, 20))
    np.testing.assert_array_equal(np.argsort(calibrate_sigmoid(probabilities, 3.0), 1), np.argsort(probabilities, 1))


def test_reliability_bins_a_calibrated_model_on_the_diagonal():
    rng = np.random.default_rng(4)
    predicted = rng.random(200_000)
    outcomes = rng.random(predicted.size) < predicted
    figure = reliability(predicted, outcomes, bins=10)
    np.testing.assert_allclose(figure["observed"], figure["predicted"], atol=0.01)
    assert figure["ece"] < 0.01 and figure["count"].sum() == predicted.size
    assert reliability(np.full(1000, 0.9), np.zeros(1000))["ece"] == pytest.approx(0.9)
