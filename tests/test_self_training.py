"""Self-training (issue 27 part 3): the pure pseudo-label rules, exhaustively on constructed cases, and the stage on a
copy of the smoke run: it trains both heads on fit + pseudo-labelled test images, never on a validation image."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from voc_pipeline.config import build_config
from voc_pipeline.core.classes import NUM_CLASSES, VOID_LABEL
from voc_pipeline.core.pseudo_labels import (
    CONFIDENCE_BINS,
    NO_AGREEMENT,
    SegmenterView,
    agreement,
    confidence_histograms,
    histogram_threshold,
    precision_threshold,
    pseudo_label,
)
from voc_pipeline.errors import ConfigError


def brute_force_threshold(scores, correct, precision):
    """The lowest score value t with mean(correct[scores >= t]) >= precision, trying every value."""
    passing = [t for t in sorted(set(scores)) if np.mean(np.asarray(correct)[np.asarray(scores) >= t]) >= precision]
    return min(passing) if passing else math.inf


def test_precision_threshold_on_constructed_scores():
    scores, correct = [0.9, 0.8, 0.7, 0.6], [1, 1, 0, 1]
    assert precision_threshold(scores, correct, 0.75) == 0.6
    assert precision_threshold(scores, correct, 0.9) == 0.8
    assert precision_threshold(scores, correct, 0.0) == 0.6
    assert precision_threshold([0.9, 0.5], [0, 0], 0.5) == math.inf
    assert precision_threshold([], [], 0.5) == math.inf


def test_equal_scores_pass_or_fail_together():
    # Cutting between the two 0.5s would give 1.0 precision at 0.5; they go together, so only 0.9 passes.
    assert precision_threshold([0.9, 0.5, 0.5], [1, 1, 0], 0.9) == 0.9
    assert precision_threshold([0.9, 0.5, 0.5], [1, 1, 0], 0.6) == 0.5


@pytest.mark.parametrize("seed", range(30))
def test_precision_threshold_matches_brute_force(seed):
    generator = np.random.default_rng(seed)
    scores = np.round(generator.random(25), 1)  # many ties
    correct = generator.random(25) < scores
    for precision in (0.0, 0.5, 0.7, 0.9, 1.0):
        assert precision_threshold(scores, correct, precision) == brute_force_threshold(scores, correct, precision)


def test_precision_threshold_refuses_nan_and_mismatched_lengths():
    with pytest.raises(ValueError, match="NaN"):
        precision_threshold([0.5, np.nan], [1, 0], 0.5)
    with pytest.raises(ValueError, match="one length"):
        precision_threshold([0.5, 0.4], [1], 0.5)


@pytest.mark.parametrize("seed", range(10))
def test_pixel_threshold_from_histograms_matches_the_pixels(seed):
    generator = np.random.default_rng(seed)
    confidence = generator.random(5000).astype(np.float32)
    right = generator.random(5000) < confidence
    correct_counts, total_counts = confidence_histograms(confidence, right)
    assert total_counts.sum() == 5000 and correct_counts.sum() == right.sum()
    for precision in (0.5, 0.8, 0.95):
        threshold = histogram_threshold(correct_counts, total_counts, precision)
        edges = [edge / CONFIDENCE_BINS for edge in range(CONFIDENCE_BINS)]
        expected = min((edge for edge in edges if (confidence >= edge).any()
                        and right[confidence >= edge].mean() >= precision), default=math.inf)
        assert threshold == pytest.approx(expected)


def test_pixel_histograms_put_certainty_in_the_last_bin_and_refuse_impossible_counts():
    correct_counts, total_counts = confidence_histograms(np.array([1.0, 0.0]), np.array([True, False]))
    assert correct_counts[-1] == 1 and total_counts[0] == 1
    assert histogram_threshold(np.zeros(CONFIDENCE_BINS), np.zeros(CONFIDENCE_BINS), 0.5) == math.inf
    with pytest.raises(ValueError, match="more correct"):
        histogram_threshold(np.ones(CONFIDENCE_BINS), np.zeros(CONFIDENCE_BINS), 0.5)


def probabilities_painting(label_map: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """(H, W, 21) probabilities giving each pixel its label with `confidence`, the rest spread evenly."""
    probabilities = np.repeat(((1 - confidence) / NUM_CLASSES)[..., None], NUM_CLASSES + 1, axis=-1)
    np.put_along_axis(probabilities, label_map[..., None].astype(np.int64), confidence[..., None], axis=-1)
    return probabilities


def test_both_heads_must_agree_on_the_main_class():
    label_map = np.zeros((10, 10), np.uint8)
    label_map[:6, :6] = 8  # cat on 36 pixels
    label_map[8:, 8:] = 12  # dog on 4
    view = SegmenterView.of(probabilities_painting(label_map, np.full((10, 10), 0.9)))
    classifier = np.full(NUM_CLASSES, 0.1)
    classifier[7] = 0.7  # cat
    chosen, score = agreement(classifier, view)
    assert chosen == 7
    assert score == pytest.approx(min(0.7, view.presence[7]))
    classifier[11] = 0.8  # the classifier now prefers dog, the segmenter still paints mostly cat
    assert agreement(classifier, view) == (NO_AGREEMENT, 0.0)
    background_only = SegmenterView.of(probabilities_painting(np.zeros((10, 10), np.uint8), np.full((10, 10), 0.9)))
    assert agreement(classifier, background_only) == (NO_AGREEMENT, 0.0)


def test_pseudo_masks_keep_confident_pixels_and_flag_what_they_hold():
    label_map = np.zeros((20, 20), np.uint8)
    label_map[:10] = 15  # person, top half
    label_map[19, 19] = 3  # one bird pixel: under the minimum area
    confidence = np.full((20, 20), 0.95)
    confidence[:, :5] = 0.4  # unsure left stripe
    mask, flags = pseudo_label(SegmenterView.of(probabilities_painting(label_map, confidence)), 0.6, 0.01)
    assert (mask[:, :5] == VOID_LABEL).all(), "unsure pixels are ignored"
    assert (mask[:10, 5:] == 15).all() and (mask[10:19, 5:] == 0).all()
    assert mask[19, 19] == VOID_LABEL, "a class under the minimum area is ignored, not called background"
    assert flags.tolist() == [1 if k == 14 else 0 for k in range(NUM_CLASSES)]
    assert mask.dtype == np.uint8 and flags.dtype == np.int8


def test_the_view_refuses_a_map_of_the_wrong_shape():
    with pytest.raises(ValueError, match="21"):
        SegmenterView.of(np.zeros((4, 4, 20)))


@pytest.mark.parametrize("setting, message", [
    ("classifier.refit_all=true", "refit_all"),
    ("segmenter.refit_all=true", "refit_all"),
    ("classifier.kfold=true", "kfold"),
])
def test_self_training_refuses_what_it_cannot_continue(setting, message):
    with pytest.raises(ConfigError, match=message):
        build_config("smoke", ["self_training.rounds=1", setting])
    build_config("smoke", [setting])  # fine without self-training


def test_self_training_refuses_heads_trained_on_cached_features():
    with pytest.raises(ConfigError, match="freeze_backbone"):
        build_config("cpu-foundation", ["self_training.rounds=1"])
    build_config("cpu-foundation", [])


def test_self_training_rounds_paste_nothing():
    """A pseudo mask's void is every unsure pixel; copy-paste would paste what lies under it onto fit images, unflagged."""
    from voc_pipeline.config_view import ConfigView
    from voc_pipeline.graph import stage_named
    from voc_pipeline.models.heads import without_copy_paste

    config = build_config("smoke", ["classifier.copy_paste=0.5", "segmenter.copy_paste=0.3", "self_training.rounds=1"])
    stage = stage_named("self-train")
    view = ConfigView(config, stage.name, stage.config_keys, left_out=stage.leaves_out)  # as the stage sees it
    for section in (view.classifier, view.segmenter):
        settings = without_copy_paste(section)
        assert settings.copy_paste == 0.0 and settings.backbone == section.backbone
    assert (config.classifier.copy_paste, config.segmenter.copy_paste) == (0.5, 0.3), "the run's own is left as it is"


@pytest.mark.parametrize("head_name", ["classifier", "segmenter"])
def test_a_self_training_round_hands_its_training_settings_without_copy_paste(monkeypatch, head_name):
    from voc_pipeline.config_view import ConfigView
    from voc_pipeline.graph import stage_named
    from voc_pipeline.models import heads

    config = build_config("smoke", ["classifier.copy_paste=0.5", "segmenter.copy_paste=0.3", "self_training.rounds=1"])
    stage = stage_named("self-train")
    view = ConfigView(config, stage.name, stage.config_keys, left_out=stage.leaves_out)
    handed = []
    # Stops at the shared training step, recording the settings continue_head hands it.
    monkeypatch.setattr(heads, "fit_head", lambda *arguments: handed.append(arguments[-1]))
    head = {"classifier": heads.CLASSIFIER, "segmenter": heads.SEGMENTER}[head_name]
    heads.continue_head(view, head, None, np.arange(4), np.arange(4, 6), None, None, config.run_dir / "model.keras")
    assert len(handed) == 1 and handed[0].copy_paste == 0.0
    assert handed[0].backbone == getattr(config, head_name).backbone


@pytest.mark.slow
def test_self_training_trains_on_fit_and_pseudo_labelled_test_images_only(smoke_run, tmp_path, monkeypatch):
    from voc_pipeline import artifacts
    from voc_pipeline.graph import run_until
    from voc_pipeline.models import heads

    # What each head really trains and validates on, seen on the way into the real training.
    seen = []
    real_continue_head = heads.continue_head

    def recording_continue_head(config, head, data, fit_positions, validation_positions, *rest):
        seen.append((head.name, data.ids[fit_positions].tolist(), data.ids[validation_positions].tolist(),
                     [data.masks[p] for p in fit_positions if data.ids[p] < 0]))
        return real_continue_head(config, head, data, fit_positions, validation_positions, *rest)

    monkeypatch.setattr(heads, "continue_head", recording_continue_head)

    runs = tmp_path / "runs"
    shutil.copytree(smoke_run.run_dir, runs / smoke_run.run_name)
    assignments = [f'data.root="{smoke_run.data.root}"', f'runs_dir="{runs}"', f"run_name='{smoke_run.run_name}'",
                   f'submit.output_dir="{tmp_path / "output"}"', "self_training.rounds=1", "self_training.epochs=1",
                   # Every agreeing image and pixel passes, so that the smoke run's small models pseudo-label some.
                   "self_training.image_precision=0.0", "self_training.pixel_precision=0.0"]
    config = build_config("smoke", assignments)
    outcomes = run_until(config, "evaluate")
    manifest = json.loads((config.run_dir / "self_training.json").read_text())
    ran = {stage for stage, outcome in outcomes.items() if outcome == "ran"}
    assert ran - {"predict"} == {"self-train", "refit", "submit", "evaluate"}, "the first trainings and tune are reused"
    assert ("predict" in ran) == manifest["kept"], "the test predictions change exactly when other models make them"

    splits = artifacts.read_splits(config.run_dir)
    assert manifest["pseudo_labelled_images"] > 0
    assert sorted(manifest["trained_on_ids"]["train"]) == sorted(splits.train_ids.tolist())
    assert not set(manifest["trained_on_ids"]["train"]) & set(splits.validation_ids.tolist()), \
        "no validation image is trained on"
    test_ids = set(np.load(config.run_dir / "test_predictions.npz")["ids"].tolist())
    assert set(manifest["trained_on_ids"]["test"]) <= test_ids
    assert len(manifest["trained_on_ids"]["test"]) == manifest["pseudo_labelled_images"]
    assert [name for name, *_ in seen] == ["classifier", "segmenter"]
    for _, fit_ids, validation_ids, pseudo_masks in seen:
        train_ids = [i for i in fit_ids if i >= 0]
        pseudo_ids = sorted(-i - 1 for i in fit_ids if i < 0)  # test ids, negated minus one
        assert sorted(train_ids) == sorted(splits.train_ids.tolist()), "the fit part, and no validation image"
        assert pseudo_ids == sorted(manifest["trained_on_ids"]["test"])
        assert sorted(validation_ids) == sorted(splits.validation_ids.tolist()), "validation still chooses the epoch"
        assert all(set(np.unique(mask)) <= set(range(21)) | {VOID_LABEL} for mask in pseudo_masks)
    for head in ("classifier", "segmenter"):
        assert (config.run_dir / f"self_trained_{head}.keras").is_file()
    assert (config.run_dir / "pseudo_labels.png").is_file()
    assert set(manifest["validation_score"]) == {"first", "self_trained"}
    # Training, the stage reads every configuration entry its cache key declares (test_graph checks it off).
    from voc_pipeline.graph import stage_named
    from voc_pipeline.run_folder import read_record

    read = read_record(config.run_dir, "self-train")["config_read"]
    assert [entry for entry in stage_named("self-train").config_keys
            if not any(key == entry or key.startswith(entry + ".") for key in read)] == []

    final = json.loads((config.run_dir / "final_models.json").read_text())
    if manifest["kept"]:
        assert final["segmenter"]["models"] == ["self_trained_segmenter.keras"]
        assert "pseudo-labelled test images" in final["classifier"]["trained_on"]
    else:
        assert final["segmenter"]["models"] == ["segmenter.keras"], "a self-training that did not win is not used"
    report = (config.run_dir / "report.md").read_text()
    assert "Self-training" in report and f"pseudo-labelled {manifest['pseudo_labelled_images']} of" in report

    # Off again: the first models make the predictions, and self-train reruns without training.
    off = build_config("smoke", [*assignments[:-3], "self_training.rounds=0"])
    run_until(off, "predict")
    assert json.loads((off.run_dir / "self_training.json").read_text()) == {"rounds": 0, "kept": False}
    assert json.loads((off.run_dir / "final_models.json").read_text())["segmenter"]["models"] == ["segmenter.keras"]


def manifest_with(rounds: list[dict], scores: dict, kept: bool) -> dict:
    trained = [r["round"] for r in rounds if r["pseudo_labelled"]]
    return {"rounds": len(rounds), "rounds_run": len(rounds), "kept": kept, "fit_images": 278,
            "rounds_trained": max(trained, default=0),
            "pseudo_labelled_images": max((r["pseudo_labelled"] for r in rounds), default=0),
            "validation_score": scores, "per_round": rounds}


def a_round(number: int, pseudo_labelled: int) -> dict:
    return {"round": number, "test_images": 88, "pseudo_labelled": pseudo_labelled, "classes_per_image": 1.0,
            "labelled_pixel_share": 0.5, "on_validation": {"images": 5, "flags_f1": 0.67, "pixel_accuracy": 0.77}}


TRAINED_ON = "trained on, beside the 278 fit images"


@pytest.mark.parametrize("rounds, scores, kept, expected, absent", [
    ([a_round(1, 7)], {"first": 0.3082, "self_trained": 0.2786}, False, ["7 of 88", "0.2786", "not kept", TRAINED_ON],
     ["kept: the"]),
    ([a_round(1, 7)], {"first": 0.30, "self_trained": 0.35}, True, ["kept: the test predictions are the self-trained"],
     ["not kept"]),
    ([a_round(1, 0)], {"first": 0.30}, False, ["No test image passed"], [TRAINED_ON, "Validation score"]),
    # A second round that found nothing: the text names the round that trained.
    ([a_round(1, 9), a_round(2, 0)], {"first": 0.30, "self_trained": 0.31}, False, ["Round 1 pseudo-labelled 9", TRAINED_ON],
     []),
])
def test_the_report_says_what_self_training_did(tmp_path, rounds, scores, kept, expected, absent):
    from voc_pipeline.report_parts import self_training_part

    (tmp_path / "self_training.json").write_text(json.dumps(manifest_with(rounds, scores, kept)))
    text = self_training_part(tmp_path)[0]
    assert "Self-training on the test images" in text
    for phrase in expected:
        assert phrase in text
    for phrase in absent:
        assert phrase not in text


def test_the_report_says_nothing_of_self_training_when_it_was_off(tmp_path):
    from voc_pipeline.report_parts import self_training_part

    assert self_training_part(tmp_path) == []  # a run from before the stage
    (tmp_path / "self_training.json").write_text(json.dumps({"rounds": 0, "kept": False}))
    assert self_training_part(tmp_path) == []


def test_refit_refuses_a_self_trained_model_that_is_not_the_one_recorded(tmp_path):
    from voc_pipeline.artifacts import ArtifactError
    from voc_pipeline.files import hash_file
    from voc_pipeline.stages.refit import self_trained

    model = tmp_path / "self_trained_segmenter.keras"
    model.write_bytes(b"the self-trained model")
    manifest = {"models": {"segmenter": model.name}, "sha256": {"segmenter": hash_file(model)},
                "pseudo_labelled_images": 7, "rounds_trained": 1}
    entry = self_trained(tmp_path, manifest, "segmenter", 278)
    assert entry["images"] == 285 and entry["sha256"] == [hash_file(model)]
    assert "7 pseudo-labelled test images (1 round of self-training)" in entry["trained_on"]
    model.write_bytes(b"another model, copied over it")
    with pytest.raises(ArtifactError, match="self_trained_segmenter.keras.*not those self_training.json recorded"):
        self_trained(tmp_path, manifest, "segmenter", 278)
