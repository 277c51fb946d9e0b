"""Stage `self-train`: train both heads on from the test images where they agree confidently, kept only if
validation says so.

With `self_training.rounds` = 0 (the default) it only records that self-training is off, and the first models
make the test predictions. Each round:

1. both heads (the first models, then the last round's) predict the validation and the test images, through
   the plan `tune` chose;
2. on validation, the score a test image's agreement needs and the probability a pixel needs are chosen for
   `image_precision` and `pixel_precision` (core.pseudo_labels); the validation images themselves only measure;
3. the test images that pass get pseudo-labels: the confident pixels of the segmenter's mask (the others void,
   ignored by the loss) and the classes that mask holds as flags;
4. each head trains on from where it is, on the fit images and the pseudo-labelled ones, for
   `self_training.epochs` epochs; validation picks the epoch, as in the first training.

Validation images are never trained on nor pseudo-labelled, so after the last round the self-trained models and
the first ones are scored on them, each through tune's plan: the self-trained models are kept only when they
beat the first ones by more than the noise (core.selection.choose_within_noise). Tune's thresholds and rules were
chosen on the first models, which favours them: a kept self-training won despite that. Stage `refit` names the
models that predict the test set; the report and the notebook say when they were self-trained.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voc_pipeline import artifacts
from voc_pipeline.config import Config
from voc_pipeline.core.classes import CLASS_NAMES, NUM_CLASSES, VOID_LABEL
from voc_pipeline.core.pseudo_labels import (
    NO_AGREEMENT,
    SegmenterView,
    agreement,
    confidence_histograms,
    histogram_threshold,
    precision_threshold,
    pseudo_label,
)
from voc_pipeline.core.scoring import classification_row_scores, segmentation_row_score
from voc_pipeline.core.selection import choose_within_noise
from voc_pipeline.files import hash_file, write_json_atomic

logger = logging.getLogger(__name__)

HEADS = ("classifier", "segmenter")
EXAMPLES = 8


@dataclass
class ImageOutputs:
    """One image as both heads see it: the classifier's probabilities, what pseudo-labelling keeps of the
    segmenter's, and the plan's final flags and label map."""

    classifier_probabilities: np.ndarray
    view: SegmenterView
    flags: np.ndarray
    label_map: np.ndarray


def predict_images(models: dict, images: list[np.ndarray], plan, geometry: tuple[int, int], inference):
    """ImageOutputs of each image, in order, one batch of segmenter probabilities in memory at a time."""
    from voc_pipeline.models.classifier import predict_probabilities
    from voc_pipeline.models.segmenter import probability_maps

    probabilities = predict_probabilities([models["classifier"]], images, inference.batch_size,
                                          inference.classifier_flip_tta)
    maps = probability_maps(models["segmenter"], images, *geometry, inference.batch_size, inference.segmenter_flip_tta,
                            plan.scales)
    for classifier_probabilities, segmenter_probabilities in zip(probabilities, maps):
        _, flags, label_map = plan.decide(segmenter_probabilities, classifier_probabilities)
        yield ImageOutputs(classifier_probabilities, SegmenterView.of(segmenter_probabilities), flags, label_map)


def competition_rows(outputs: list[ImageOutputs], labels: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """Each validation image's share of the competition score: the mean of its classification and segmentation rows."""
    classification = classification_row_scores(np.array([output.flags for output in outputs]), labels)
    segmentation = np.array([segmentation_row_score(output.label_map, np.where(mask == VOID_LABEL, 0, mask))
                             for output, mask in zip(outputs, masks)])
    return (classification + segmentation) / 2


@dataclass(frozen=True)
class Thresholds:
    """What a test image's agreement score and a pixel's probability need, chosen on validation."""

    image: float
    pixel: float


def choose_thresholds(settings, outputs: list[ImageOutputs], labels: np.ndarray, masks: list[np.ndarray]) -> Thresholds:
    """The image threshold for `settings.image_precision` over the agreeing validation images, and the pixel
    threshold for `settings.pixel_precision` over their labelled (non-void) pixels."""
    agreements = [agreement(output.classifier_probabilities, output.view) for output in outputs]
    agreeing = [index for index, (chosen, _) in enumerate(agreements) if chosen != NO_AGREEMENT]
    scores = np.array([agreements[index][1] for index in agreeing])
    correct = np.array([labels[index, agreements[index][0]] == 1 for index in agreeing], dtype=bool)
    right, total = np.zeros(100), np.zeros(100)
    for index in agreeing:
        labelled = masks[index] != VOID_LABEL
        view = outputs[index].view
        counts = confidence_histograms(view.confidence[labelled], view.labels[labelled] == masks[index][labelled])
        right, total = right + counts[0], total + counts[1]
    return Thresholds(precision_threshold(scores, correct, settings.image_precision),
                      histogram_threshold(right, total, settings.pixel_precision))


def pseudo_labels_of(outputs, thresholds: Thresholds, minimum_area: float) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{position: (mask, flags)} of the images whose agreement passes and whose pseudo mask keeps the agreed class."""
    chosen = {}
    for position, output in enumerate(outputs):
        agreed, score = agreement(output.classifier_probabilities, output.view)
        if agreed == NO_AGREEMENT or score < thresholds.image:
            continue
        mask, flags = pseudo_label(output.view, thresholds.pixel, minimum_area)
        if flags[agreed]:
            chosen[position] = (mask, flags)
    return chosen


def pseudo_label_quality(chosen: dict, labels: np.ndarray, masks: list[np.ndarray]) -> dict:
    """How right the pseudo-labels would be on validation images: the flags' F1 and the kept pixels' accuracy."""
    if not chosen:
        return {"images": 0, "flags_f1": None, "pixel_accuracy": None}
    positions = sorted(chosen)
    f1 = classification_row_scores(np.array([chosen[p][1] for p in positions]), labels[positions])
    kept = right = 0
    for position in positions:
        mask, truth = chosen[position][0], masks[position]
        counted = (mask != VOID_LABEL) & (truth != VOID_LABEL)
        kept, right = kept + int(counted.sum()), right + int((mask[counted] == truth[counted]).sum())
    return {"images": len(positions), "flags_f1": round(float(f1.mean()), 4),
            "pixel_accuracy": round(right / kept, 4) if kept else None}


def with_pseudo_labels(train, test, chosen: dict):
    """The train split followed by the pseudo-labelled test images (ids negated, minus one, so that they never
    meet a train id), and the positions of those test images in it."""
    from voc_pipeline.data.competition import ImageSet

    positions = sorted(chosen)
    combined = ImageSet(name="train + pseudo-labelled test",
                        ids=np.concatenate([train.ids, -(test.ids[positions] + 1)]),
                        images=[*train.images, *(test.images[p] for p in positions)],
                        masks=[*train.masks, *(chosen[p][0] for p in positions)],
                        labels=np.concatenate([train.labels, np.array([chosen[p][1] for p in positions],
                                                                     dtype=train.labels.dtype).reshape(-1, NUM_CLASSES)]),
                        class_names=train.class_names, root=train.root)
    return combined, np.arange(len(train), len(combined))


def self_training_phase(schedule, settings):
    """The one phase of a round: the head's last planned phase (what trains, its layer-wise decay) at
    `learning_rate_scale` of its rate, for `epochs` epochs with one warm-up epoch."""
    from voc_pipeline.models.training import Phase, plan_phases

    last = plan_phases(schedule)[-1]
    return Phase("self-training", settings.epochs, last.learning_rate * settings.learning_rate_scale,
                 min(1, settings.epochs - 1), last.trainable_fraction, last.layer_decay, last.keep_frozen)


def finite_or_none(value: float) -> float | None:
    """A threshold for JSON: None where nothing passes (infinite)."""
    return None if math.isinf(value) else round(value, 4)


def load_models(paths: dict[str, Path]) -> dict:
    return {head: artifacts.load_model_file(path, "self-train") for head, path in paths.items()}


def draw_pseudo_labels(test, chosen: dict, path: Path) -> None:
    from voc_pipeline.plots import plot_training_examples

    positions = sorted(chosen)[:EXAMPLES]
    titles = [f"test {int(test.ids[p])}: " + ", ".join(CLASS_NAMES[k] for k in np.flatnonzero(chosen[p][1]))
              for p in positions]
    plot_training_examples([test.images[p] for p in positions], [chosen[p][0] for p in positions], titles, path)


def run_self_train(config: Config) -> dict:
    """Stage `self-train`: writes self_training.json and, with rounds, the self-trained models, their history and
    curves, and pseudo_labels.png; returns each round's figures and the validation comparison."""
    settings, run_dir = config.self_training, config.run_dir
    if not settings.rounds:
        write_json_atomic(artifacts.SELF_TRAINING.path(run_dir), {"rounds": 0, "kept": False})
        return {"rounds": 0, "kept": False}

    from voc_pipeline.data.competition import load_split
    from voc_pipeline.data.splits import positions_of
    from voc_pipeline.models.heads import CLASSIFIER, SEGMENTER, continue_head, training_setup
    from voc_pipeline.models.training import choose_strategy

    train, splits, _ = training_setup(config)
    test = load_split(config.data.root, "test")
    plan, _ = artifacts.read_inference_plan(run_dir)
    segmenter_manifest = artifacts.read_json(artifacts.SEGMENTER_MANIFEST, run_dir)
    geometry = (int(segmenter_manifest["image_size"]), int(segmenter_manifest["output_stride"]))
    first = {"classifier": run_dir / artifacts.read_json(artifacts.CLASSIFIER_MANIFEST, run_dir)["models"][0],
             "segmenter": run_dir / segmenter_manifest["model"]}
    fit = positions_of(train.ids, splits.train_ids)
    validation = positions_of(train.ids, splits.validation_ids)
    validation_images = [train.images[p] for p in validation]
    validation_labels, validation_masks = train.labels[validation], [train.masks[p] for p in validation]
    strategy = choose_strategy()

    # `trained_on`: the pseudo-labels of the last round that trained.
    current, rounds, first_rows, trained_on, rounds_trained = dict(first), [], None, {}, 0
    for number in range(1, settings.rounds + 1):
        models = load_models(current)
        outputs = list(predict_images(models, validation_images, plan, geometry, config.inference))
        if first_rows is None:
            first_rows = competition_rows(outputs, validation_labels, validation_masks)
        thresholds = choose_thresholds(settings, outputs, validation_labels, validation_masks)
        quality = pseudo_label_quality(pseudo_labels_of(outputs, thresholds, plan.tiny_fraction), validation_labels,
                                       validation_masks)
        chosen = pseudo_labels_of(predict_images(models, test.images, plan, geometry, config.inference), thresholds,
                                  plan.tiny_fraction)
        del models  # the inference copies; training loads its own
        figures = {"round": number, "image_threshold": finite_or_none(thresholds.image),
                   "pixel_threshold": finite_or_none(thresholds.pixel),
                   "test_images": len(test), "pseudo_labelled": len(chosen),
                   "classes_per_image": round(float(np.mean([flags.sum() for _, flags in chosen.values()])), 3)
                   if chosen else None,
                   "labelled_pixel_share": round(float(np.mean([(mask != VOID_LABEL).mean() for mask, _ in chosen.values()])), 3)
                   if chosen else None,
                   "on_validation": quality}
        logger.info("self-training round %d: %d of %d test images pseudo-labelled (agreement score >= %.3f, pixels "
                    ">= %.2f); on validation such labels have flag F1 %s and pixel accuracy %s", number, len(chosen),
                    len(test), thresholds.image, thresholds.pixel, quality["flags_f1"], quality["pixel_accuracy"])
        rounds.append(figures)
        if not chosen:
            logger.warning("self-training round %d: no test image passed the thresholds chosen on validation; "
                           "self-training stops here", number)
            break
        combined, pseudo_positions = with_pseudo_labels(train, test, chosen)
        for head in (CLASSIFIER, SEGMENTER):
            continue_head(config, head, combined, np.concatenate([fit, pseudo_positions]), validation,
                          self_training_phase(head.settings(config), settings), strategy, current[head.name])
            current[head.name] = head.self_trained_files(run_dir).model
        trained_on, rounds_trained = chosen, number

    rows, kept = first_rows[None], False
    if rounds_trained:
        draw_pseudo_labels(test, trained_on, artifacts.PSEUDO_LABELS.path(run_dir))
        outputs = list(predict_images(load_models(current), validation_images, plan, geometry, config.inference))
        rows = np.stack([first_rows, competition_rows(outputs, validation_labels, validation_masks)])
        kept = choose_within_noise(rows) == 1
    validation_scores = dict(zip(("first", "self_trained"), (round(float(row.mean()), 4) for row in rows)))
    if rounds_trained:
        logger.log(logging.INFO if kept else logging.WARNING,
                   "self-training: validation score %.4f against the first models' %.4f: the %s models predict the "
                   "test set", validation_scores["self_trained"], validation_scores["first"],
                   "self-trained" if kept else "first (self-training did not win by more than the noise)")
    pseudo_images = len(trained_on)
    manifest = {"rounds": settings.rounds, "rounds_run": len(rounds), "rounds_trained": rounds_trained,
                "kept": bool(kept),
                "models": {head: current[head].name for head in HEADS} if kept else None,
                # The kept models' bytes, so that stage refit (which reads this file) reruns whenever they change.
                "sha256": {head: hash_file(current[head]) for head in HEADS} if kept else None,
                "pseudo_labelled_images": pseudo_images, "fit_images": len(fit),
                # What the last round trained on, by id: the fit part and test images, never a validation image.
                "trained_on_ids": {"train": train.ids[fit].tolist(),
                                   "test": test.ids[sorted(trained_on)].tolist()},
                "validation_score": validation_scores, "per_round": rounds,
                "epochs": settings.epochs, "learning_rate_scale": settings.learning_rate_scale,
                "image_precision": settings.image_precision, "pixel_precision": settings.pixel_precision}
    write_json_atomic(artifacts.SELF_TRAINING.path(run_dir), manifest)
    return manifest
