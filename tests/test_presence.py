"""The segmenter's class presence (issue 27, part 2): the pooling (NumPy and Keras agree), the loss term the masks
teach it with, the third flag source `tune` keeps only when it wins, and the plan that applies it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from voc_pipeline import artifacts
from voc_pipeline.core.classes import NUM_CLASSES, VOID_LABEL
from voc_pipeline.core.fusion import compare_flag_sources
from voc_pipeline.core.joint import InferencePlan, JointRule
from voc_pipeline.core.presence import PRESENCE_POWER, presence_scores
from voc_pipeline.core.thresholds import default_grid, flag_fitter
from voc_pipeline.data.competition import labels_from_mask
from voc_pipeline.models.losses import SegmentationLoss, presence_log_scores


def maps_with(shares: dict[int, float], size: int = 40, doubt: float = 0.0) -> np.ndarray:
    """(size, size, 21) probabilities: each class in `shares` painted with certainty on that share of the rows,
    the rest background; `doubt` spread evenly over the foreground classes everywhere else."""
    probabilities = np.zeros((size, size, NUM_CLASSES + 1))
    probabilities[..., 0] = 1.0 - doubt * NUM_CLASSES
    probabilities[..., 1:] = doubt
    row = 0
    for label, share in shares.items():
        rows = int(round(share * size))
        probabilities[row:row + rows] = 0.0
        probabilities[row:row + rows, :, label] = 1.0
        row += rows
    return probabilities


def test_presence_is_the_power_mean_of_each_class_probability():
    # A class painted with certainty on a tenth of the image: (0.1 * 1^r)^(1/r).
    scores = presence_scores(maps_with({3: 0.1}))
    assert scores.shape == (NUM_CLASSES,)
    assert scores[2] == pytest.approx(0.1 ** (1 / PRESENCE_POWER))
    # Scattered doubt stays what it is; an absent class scores nothing.
    doubtful = presence_scores(maps_with({}, doubt=0.04))
    np.testing.assert_allclose(doubtful, 0.04)
    assert presence_scores(maps_with({3: 0.1}))[0] == pytest.approx(0.0, abs=1e-20)
    # Power 1 is the mean probability (the painted share), a large power the largest pixel probability.
    assert presence_scores(maps_with({5: 0.25}), power=1.0)[4] == pytest.approx(0.25)
    assert presence_scores(maps_with({5: 0.25}, doubt=0.01), power=400.0)[4] == pytest.approx(1.0, abs=0.01)


def test_a_small_object_counts_more_than_scattered_doubt():
    small_object = presence_scores(maps_with({7: 0.025}))[6]
    doubt_everywhere = presence_scores(maps_with({}, doubt=0.045))[6]
    assert small_object > 0.5 > 0.1 > doubt_everywhere


def test_presence_of_a_batch_is_each_image_presence_and_bad_shapes_are_refused():
    batch = np.stack([maps_with({1: 0.5}), maps_with({20: 0.2})])
    np.testing.assert_allclose(presence_scores(batch), [presence_scores(batch[0]), presence_scores(batch[1])])
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, 21\).*\(40, 40, 20\)"):
        presence_scores(np.zeros((40, 40, 20)))


def test_the_keras_pooling_is_the_numpy_pooling():
    logits = np.random.default_rng(0).normal(0, 3, (2, 12, 16, NUM_CLASSES + 1)).astype(np.float32)
    probabilities = np.asarray(ops.softmax(logits, axis=-1), dtype=np.float64)
    np.testing.assert_allclose(np.exp(np.asarray(presence_log_scores(logits))), presence_scores(probabilities),
                               rtol=1e-4)


def numpy_cross_entropy(logits: np.ndarray, masks: np.ndarray) -> float:
    """The presence term computed from NumPy's pooling and the masks' classes."""
    probabilities = np.asarray(ops.softmax(logits, axis=-1), dtype=np.float64)
    presence = np.clip(presence_scores(probabilities), 1e-7, 1 - 1e-7)
    labels = np.stack([labels_from_mask(np.where(mask == VOID_LABEL, 0, mask)) for mask in masks])
    return float(-np.mean(labels * np.log(presence) + (1 - labels) * np.log(1 - presence)))


def test_the_presence_term_is_the_cross_entropy_of_the_pooled_presences_against_the_mask_classes():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (3, 10, 10, NUM_CLASSES + 1)).astype(np.float32)
    masks = rng.choice([0, 4, 9, VOID_LABEL], (3, 10, 10)).astype(np.int32)
    masks[2] = np.where(masks[2] == 9, 0, masks[2])  # one image without class 9
    plain = float(SegmentationLoss(21, VOID_LABEL, 0.5)(masks, logits))
    assert float(SegmentationLoss(21, VOID_LABEL, 0.5, presence_weight=0.0)(masks, logits)) == plain
    with_presence = float(SegmentationLoss(21, VOID_LABEL, 0.5, presence_weight=2.0)(masks, logits))
    assert with_presence - plain == pytest.approx(2.0 * numpy_cross_entropy(logits, masks), rel=1e-4)


def test_a_class_only_under_void_is_not_present():
    logits = np.zeros((1, 4, 4, NUM_CLASSES + 1), dtype=np.float32)
    void_only = np.full((1, 4, 4), VOID_LABEL, dtype=np.int32)
    void_only[0, 0, 0] = 0
    # All classes absent: the term is the same whatever the void pixels hide.
    loss = SegmentationLoss(21, VOID_LABEL, presence_weight=1.0)
    assert float(loss(void_only, logits)) == pytest.approx(float(loss(np.zeros_like(void_only), logits)))


def test_the_presence_term_pushes_a_painted_absent_class_down_and_a_present_one_up():
    logits = tf.Variable(np.zeros((1, 8, 8, NUM_CLASSES + 1), dtype=np.float32))
    mask = np.zeros((1, 8, 8), dtype=np.int32)
    mask[0, :2] = 5  # class 5 present on a quarter of the image; every other class absent
    with tf.GradientTape() as tape:
        term = SegmentationLoss(21, VOID_LABEL, presence_weight=1.0)(mask, logits) - \
            SegmentationLoss(21, VOID_LABEL)(mask, logits)
    gradient = tape.gradient(term, logits).numpy()
    assert (gradient[..., 5] < 0).all(), "gradient descent raises the present class everywhere"
    assert (gradient[..., 9] > 0).all(), "and lowers an absent one"


def test_the_segmenter_loss_of_the_configuration_carries_the_presence_weight():
    from voc_pipeline.config import build_config
    from voc_pipeline.models.heads import SEGMENTER

    config = build_config("smoke", ["segmenter.presence_weight=0.5"])
    loss = SEGMENTER.loss(config.segmenter)
    assert loss.presence_weight == 0.5 and SEGMENTER.loss(build_config("smoke", []).segmenter).presence_weight == 0.0
    assert SegmentationLoss.from_config(loss.get_config()).presence_weight == 0.5


def one_class_each(images: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros((images, NUM_CLASSES), dtype=np.int8)
    labels[np.arange(images), rng.integers(0, NUM_CLASSES, images)] = 1
    return labels


def sources_for(labels: np.ndarray, classifier_knows: bool, presence_knows: bool, seed: int):
    """(classifier probabilities, largest, area, presence): each telling the classes apart or noise."""
    rng = np.random.default_rng(seed)

    def source(knows: bool) -> np.ndarray:
        return np.where(labels == 1, 0.9, 0.1) + 0.05 * rng.random(labels.shape) if knows \
            else rng.uniform(0.2, 0.8, labels.shape)

    return source(classifier_knows), rng.random(labels.shape), 0.3 * rng.random(labels.shape), source(presence_knows)


def test_tune_keeps_the_presence_source_only_when_it_wins():
    chooser = flag_fitter("global", default_grid(0.05), 1)
    labels = one_class_each(80, seed=3)
    classifier, largest, area, presence = sources_for(labels, classifier_knows=False, presence_knows=True, seed=4)
    outcome = compare_flag_sources(classifier, largest, area, presence, labels, chooser, seed=0)
    assert outcome.cross_validated("presence") > 0.95 > 0.5 > outcome.cross_validated("classifier")
    assert outcome.chosen == "presence"
    assert set(outcome.to_dict()) == {"classifier_cross_validated", "presence_cross_validated",
                                      "fused_cross_validated", "chosen"}
    # A classifier as good as the presences: the simpler source stays.
    classifier, largest, area, presence = sources_for(labels, classifier_knows=True, presence_knows=True, seed=5)
    assert compare_flag_sources(classifier, largest, area, presence, labels, chooser, seed=0).chosen == "classifier"
    # Presences that know nothing are not kept either.
    classifier, largest, area, presence = sources_for(labels, classifier_knows=True, presence_knows=False, seed=6)
    assert compare_flag_sources(classifier, largest, area, presence, labels, chooser, seed=0,
                                sources=("classifier", "presence")).chosen == "classifier"
    with pytest.raises(ValueError, match="the classifier first"):
        compare_flag_sources(classifier, largest, area, presence, labels, chooser, seed=0, sources=("presence",))


def plan(source: str, fusion=None) -> InferencePlan:
    return InferencePlan(np.full(NUM_CLASSES, 0.5), fusion, JointRule(), (1.0,), np.tile([0.0, 0.0, 1.0, 1.0], (20, 1)),
                         0.0, source=source)


def test_a_plan_with_the_presence_source_flags_what_the_segmenter_paints_whatever_the_classifier_says():
    probabilities = maps_with({12: 0.1})
    classifier = np.full(NUM_CLASSES, 0.9)
    source, flags, _ = plan("presence").decide(probabilities, classifier)
    np.testing.assert_allclose(source, presence_scores(probabilities))
    assert np.flatnonzero(flags).tolist() == [11]
    _, flags, _ = plan("classifier").decide(probabilities, classifier)
    assert flags.sum() == NUM_CLASSES
    with pytest.raises(ValueError, match="fusion model exactly for 'fused'"):
        plan("fused")
    with pytest.raises(ValueError, match="expected one of"):
        plan("segmenter")


def test_the_chosen_source_travels_from_tune_to_predict(tiny_run):
    """thresholds.json names the source; the plan predict reads back applies it."""
    config, _ = tiny_run
    path = artifacts.THRESHOLDS.path(config.run_dir)
    original = path.read_bytes()
    try:
        payload = json.loads(original)
        assert payload["source"] in ("classifier", "presence", "fused")
        path.write_text(json.dumps({**payload, "source": "presence", "fusion": None}))
        assert artifacts.read_inference_plan(config.run_dir)[0].source == "presence"
        del payload["source"]
        path.write_text(json.dumps({**payload, "fusion": None}))
        assert artifacts.read_inference_plan(config.run_dir)[0].source == "classifier", "a run tuned before presence"
    finally:
        path.write_bytes(original)


def test_the_report_states_every_source_tried_and_the_one_the_flags_come_from(smoke_run):
    tuning = artifacts.read_metrics(smoke_run.run_dir, "tune")
    sources = tuning["flag_sources"]
    assert set(sources) == {"classifier_cross_validated", "presence_cross_validated", "fused_cross_validated", "chosen"}
    titles = {"classifier": "classifier alone", "presence": "segmenter presence", "fused": "fused evidence"}
    sentence = ("Flag sources, cross-validated classification on validation: "
                + ", ".join(f"{titles[name]} {sources[f'{name}_cross_validated']:.4f}" for name in titles)
                + f"; flags from the **{titles[sources['chosen']]}**")
    assert sentence in (smoke_run.run_dir / "report.md").read_text()
    assert json.loads(artifacts.THRESHOLDS.path(smoke_run.run_dir).read_text())["source"] == sources["chosen"]
    assert artifacts.read_metrics(smoke_run.run_dir, "predict")["flags_from"] == titles[sources["chosen"]]
    # The reliability figure names the probabilities it draws: the classifier's, or the source chosen instead.
    drawn = "classifier" if sources["chosen"] == "classifier" else titles[sources["chosen"]]
    assert f"{drawn}, as trained" in tuning["calibration"]["expected_calibration_error"]
