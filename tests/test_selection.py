"""tune's decisions, each on small arrays where the right answer is known by construction."""

import numpy as np
import pytest

from voc_pipeline.core.fusion import compare_flag_sources
from voc_pipeline.core.joint import InferencePlan, JointRule, candidate_table, choose_rule, score_rules
from voc_pipeline.core.scoring import classification_row_scores, competition_score
from voc_pipeline.core.selection import (
    best_candidate,
    bootstrap_interval,
    choose_scales,
    choose_within_noise,
    cross_validated,
    cross_validated_rows,
    halves,
    held_out_selection,
    scale_options,
)
from voc_pipeline.core.thresholds import STRATEGIES, compare_strategies, default_grid, fit_flags, flag_fitter

NUM_CLASSES = 20


@pytest.mark.parametrize("count", [2, 7, 40, 41])
def test_halves_split_every_image_once_and_repeat_by_seed(count):
    first, second = halves(count, seed=4)
    assert sorted(np.concatenate([first, second]).tolist()) == list(range(count))
    assert len(first) == count // 2 and len(second) == count - count // 2
    again = halves(count, seed=4)
    assert (again[0] == first).all() and (again[1] == second).all()
    assert not (halves(count, seed=5)[0] == first).all() or count == 2


def test_a_candidate_that_only_remembers_its_fit_images_scores_zero_cross_validated():
    """It scores 1 on the images it was fitted on and 0 elsewhere: in-sample it would look perfect."""
    def memoriser(fit, score):
        remembered = set(fit.tolist())
        return float(np.mean([position in remembered for position in score]))

    assert cross_validated(memoriser, 30, seed=0) == 0.0
    assert np.isnan(cross_validated(memoriser, 1, seed=0)), "one image cannot be split in two halves"


def test_the_cross_validated_score_weights_each_half_by_its_size():
    first, second = halves(5, seed=2)
    # Scoring the 2-image half gives 1.0, the 3-image half 0.0: (2 * 1 + 3 * 0) / 5.
    score = cross_validated(lambda fit, held_out: 1.0 if len(held_out) == len(first) else 0.0, 5, seed=2)
    assert score == pytest.approx(len(first) / 5)


def test_ties_go_to_the_first_candidate():
    assert best_candidate([0.5, 0.7, 0.7]) == 1
    assert best_candidate([0.7, 0.7]) == 0 and best_candidate([0.1]) == 0


def noisy_labels(seed: int, images: int = 40):
    """Every class drawn alike: one threshold is right for all, and per-class tuning can only fit noise."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((images, NUM_CLASSES)) < 0.15).astype(np.int8)
    probabilities = np.clip(0.35 * labels + rng.random((images, NUM_CLASSES)) * 0.6, 0, 1)
    return probabilities, labels


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_one_global_threshold_is_kept_when_per_class_tuning_only_fits_noise(seed):
    probabilities, labels = noisy_labels(seed)
    result = compare_strategies(probabilities, labels, default_grid(0.01), rounds=3, seed=0)
    assert result["per_class"] > result["global"], "in-sample, per-class tuning always looks better"
    assert result["per_class_cross_validated"] < result["per_class"] - 0.02, "off its own images it must lose that"
    assert result["chosen_strategy"] == "global"
    assert (result["thresholds"] == result["global_threshold"]).all() and result["untuned"] == []


def test_the_cross_validated_strategy_scores_are_those_of_halves_scored_by_the_other_half():
    probabilities, labels = noisy_labels(7)
    grid = default_grid(0.01)
    result = compare_strategies(probabilities, labels, grid, rounds=3, seed=0, repeats=2)
    for strategy in STRATEGIES:
        by_hand = []
        for repeat in range(2):
            first, second = halves(len(labels), seed=repeat)
            for fit, held_out in ((first, second), (second, first)):
                fitted = fit_flags(strategy, probabilities[fit], labels[fit], grid, 3)
                by_hand.append(classification_row_scores(fitted.flags(probabilities[held_out]), labels[held_out]).sum())
        key = f"{strategy.replace('-', '_')}_cross_validated"
        assert result[key] == pytest.approx(sum(by_hand) / (2 * len(labels)), abs=1e-12), strategy


def segmenter_evidence(labels: np.ndarray, informative: bool, seed: int):
    """(largest probability, painted share) per (image, class): telling the classes apart, or noise."""
    rng = np.random.default_rng(seed)
    if informative:
        return 0.2 + 0.7 * labels + 0.05 * rng.random(labels.shape), 0.3 * labels + 0.01 * rng.random(labels.shape)
    return rng.random(labels.shape), 0.3 * rng.random(labels.shape)


def one_class_each(images: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros((images, NUM_CLASSES), dtype=np.int8)
    labels[np.arange(images), rng.integers(0, NUM_CLASSES, images)] = 1
    return labels


def test_fusion_that_adds_only_noise_to_a_sure_classifier_is_not_kept():
    labels = one_class_each(60, seed=1)
    sure = np.where(labels == 1, 0.95, 0.05)
    largest, area = segmenter_evidence(labels, informative=False, seed=2)
    chooser = flag_fitter("global", default_grid(0.05), 1)
    outcome = compare_flag_sources(sure, largest, area, largest, labels, chooser, seed=0, sources=("classifier", "fused"))
    assert outcome.cross_validated("classifier") == pytest.approx(1.0)
    assert outcome.chosen == "classifier" and outcome.to_dict()["chosen"] == "classifier"
    assert set(outcome.to_dict()) == {"classifier_cross_validated", "fused_cross_validated", "chosen"}


def test_fusion_wins_when_the_segmenter_knows_what_the_classifier_does_not():
    labels = one_class_each(60, seed=3)
    clueless = np.random.default_rng(4).uniform(0.2, 0.8, labels.shape)
    largest, area = segmenter_evidence(labels, informative=True, seed=5)
    chooser = flag_fitter("global", default_grid(0.05), 1)
    outcome = compare_flag_sources(clueless, largest, area, largest, labels, chooser, seed=0,
                                   sources=("classifier", "fused"))
    assert outcome.cross_validated("fused") > 0.95 > 0.5 > outcome.cross_validated("classifier")
    assert outcome.chosen == "fused" and outcome.to_dict()["chosen"] == "fused"


def test_more_scales_are_used_only_when_they_score_better():
    options = scale_options([0.75, 1.0, 1.25])
    assert options == [(1.0,), (0.75, 1.0, 1.25)]
    rng = np.random.default_rng(0)
    single = rng.random(50)
    assert choose_scales(options, np.stack([single, single + 0.05])) == (0.75, 1.0, 1.25)
    assert choose_scales(options, np.stack([single, single])) == (1.0,), "a tie keeps the cheaper single scale"
    assert choose_scales(options, np.stack([single, single + rng.normal(0.001, 0.05, 50)])) == (1.0,), "noise"
    assert scale_options([1.0]) == [(1.0,)]


def test_the_candidate_table_is_the_competition_score_of_each_rule():
    rules = [JointRule(), JointRule(masks="guided"), JointRule(masks="two-step")]
    classification = np.array([[1.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    segmentation = np.array([[0.0, 0.0], [0.2, 0.4], [1.0, 0.6]])
    table = candidate_table(rules, classification, segmentation)
    assert [row["name"] for row in table] == [rule.name for rule in rules]
    assert table[1]["score"] == pytest.approx(competition_score(classification[1], segmentation[1])["score"])
    assert [row["score"] for row in table] == pytest.approx([0.25, 0.65, 0.65])
    rows = (classification + segmentation) / 2
    assert choose_rule(rows) == 1, "two-step ties guided and comes later: the earlier (simpler) one is chosen"


def picture_with_a_missed_class():
    """A 10 x 10 image: the left half is a cat (class 8) the segmenter sees; the classifier also sees a dog (class 12)
    in the right half, where the segmenter's most probable label is background (0.45) but its foreground labels
    together (dog 0.40, bird 0.15) outweigh it."""
    probabilities = np.zeros((10, 10, NUM_CLASSES + 1))
    probabilities[:, :5, 8] = 0.9
    probabilities[:, :5, 0] = 0.1
    probabilities[:, 5:, 0] = 0.45
    probabilities[:, 5:, 12] = 0.40
    probabilities[:, 5:, 3] = 0.15
    truth = np.zeros((10, 10), dtype=np.uint8)
    truth[:, :5], truth[:, 5:] = 8, 12
    labels = np.zeros((1, NUM_CLASSES), dtype=np.int8)
    labels[0, [7, 11]] = 1
    classifier = np.full((1, NUM_CLASSES), 0.05)
    classifier[0, [7, 11]] = 0.9
    return probabilities, truth, labels, classifier


def test_the_rule_that_paints_a_class_the_classifier_accepts_is_chosen():
    probabilities, truth, labels, classifier = picture_with_a_missed_class()
    plan = InferencePlan(np.full(NUM_CLASSES, 0.5), None, JointRule(), (1.0,), np.tile([0, 0, 1, 1], (NUM_CLASSES, 1)),
                         0.002)
    rules = [JointRule(), JointRule(masks="two-step")]
    classification, segmentation, confusion, flag_counts = score_rules([probabilities], classifier, labels, [truth], plan,
                                                                        rules)
    assert flag_counts.tolist() == [[2], [2]]
    assert classification.tolist() == [[1.0], [1.0]], "both rules keep the classifier's two flags"
    # Independent heads paint only the cat: Dice 2 * 50 / (50 + 100). Two-step paints the accepted dog where the
    # segmenter sees more foreground than background: the whole mask is right.
    assert segmentation[0, 0] == pytest.approx(2 * 50 / 150) and segmentation[1, 0] == pytest.approx(1.0)
    assert confusion[0].sum() == confusion[1].sum() == 100 and confusion[1][12, 12] == 50
    assert choose_rule((classification + segmentation) / 2) == 1


def test_a_complex_candidate_that_wins_only_by_noise_is_refused():
    rng = np.random.default_rng(0)
    simple = rng.random(80)
    lucky = simple + rng.normal(0.002, 0.05, 80)  # better on average by far less than its noise
    assert lucky.mean() > simple.mean()
    assert choose_within_noise(np.stack([simple, lucky])) == 0
    clearly = simple + 0.05 + rng.normal(0, 0.01, 80)
    assert choose_within_noise(np.stack([simple, lucky, clearly])) == 2


def test_a_candidate_planted_to_win_on_one_half_only_is_refused_cross_validated():
    """Candidate 1 is far better on the first half of the images and far worse on the second: chosen on either
    half it loses on the other, and the honest estimate of choosing shows it."""
    count = 60
    first, second = halves(count, seed=3)
    simple = np.full(count, 0.5)
    planted = simple.copy()
    planted[first], planted[second] = 0.9, 0.1
    rows = np.stack([simple, planted])
    honest = held_out_selection(rows, seed=3, repeats=1)
    assert honest.mean() < 0.5, "choosing on one half, scoring on the other, the planted candidate loses"
    assert rows[:, first].mean(1).argmax() == 1, "in-sample on that half it looked best"


def test_cross_validated_rows_score_each_image_once_per_repeat_by_a_candidate_fitted_without_it():
    seen = []

    def fit_and_score(fit, score):
        assert not set(fit.tolist()) & set(score.tolist())
        seen.extend(score.tolist())
        return np.ones(len(score))

    rows = cross_validated_rows(fit_and_score, 11, seed=0, repeats=3)
    assert sorted(seen) == sorted(list(range(11)) * 3) and (rows == 1).all()
    assert np.isnan(cross_validated_rows(fit_and_score, 1, seed=0)).all()


def test_the_bootstrap_interval_covers_the_mean_and_narrows_with_more_images():
    rng = np.random.default_rng(1)
    small, large = rng.random(30), rng.random(3000)
    low, high = bootstrap_interval(small, seed=0)
    assert low < small.mean() < high
    low_large, high_large = bootstrap_interval(large, seed=0)
    assert high_large - low_large < (high - low) / 5
