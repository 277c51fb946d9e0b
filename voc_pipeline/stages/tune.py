"""Stage `tune`: every choice made after training, each on validation predictions, in this order:

1. thresholds on the classifier's validation (or out-of-fold) probabilities: 0.5, the best global
   threshold and per-class thresholds side by side; the tuned strategies are also scored cross-validated
   (thresholds chosen on one half, scored on the other) and the better of the two there is kept;
2. the segmenter's scales: the configured scales against 1.0 alone, by the validation Dice of the
   segmenter's own masks, with the time each costs;
3. fused evidence: the classifier's probability combined with the segmenter's evidence for each class
   by a small logistic model, against the classifier alone, cross-validated; kept only when it wins;
4. the joint rule (adding classes the segmenter paints, the mask rule, the box fallback), by the
   competition score over both heads.
The segmenter runs here on the validation images with the code `predict` runs on the test images, one
batch at a time; three passes (scales, candidates, the worst images) keep memory bounded by a batch.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from sklearn.metrics import f1_score

from voc_pipeline import artifacts
from voc_pipeline.config import Config
from voc_pipeline.core.classes import CLASS_NAMES, NUM_CLASSES
from voc_pipeline.core.fusion import fit_fusion
from voc_pipeline.core.joint import ImageDecisions, InferencePlan, JointRule, best_candidate, candidate_rules
from voc_pipeline.core.masks import class_evidence, typical_boxes
from voc_pipeline.core.scoring import (
    average_precisions,
    classification_row_scores,
    confusion_matrix,
    segmentation_row_score,
)
from voc_pipeline.core.thresholds import (
    DEFAULT_THRESHOLD,
    apply_thresholds,
    best_global_threshold,
    compare_strategies,
    default_grid,
    mean_image_f1,
    tune_thresholds,
)
from voc_pipeline.data.competition import ImageSet, load_split
from voc_pipeline.data.splits import positions_of
from voc_pipeline.errors import ArtifactError
from voc_pipeline.files import save_label_maps_atomic, write_json_atomic, write_text_atomic
from voc_pipeline.models.segmenter import probability_maps
from voc_pipeline.plots import plot_per_class_bars

logger = logging.getLogger(__name__)


def markdown_table(rows: dict[str, dict]) -> str:
    """The threshold comparison as a markdown table, one row per probability source."""
    lines = ["| probabilities | 0.5 | best global (t) | global, cross-validated | per-class | per-class, cross-validated | chosen |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['threshold_0.5']:.4f} | {row['global']:.4f} ({row['global_threshold']:.2f}) | "
                     f"{row['global_cross_validated']:.4f} | {row['per_class']:.4f} | "
                     f"{row['per_class_cross_validated']:.4f} | {row['chosen_strategy']} |")
    return "\n".join(lines)


def summary_of(comparison: dict) -> dict:
    return {key: value for key, value in comparison.items() if key not in ("thresholds", "untuned")}


# ---------------------------------------------------------------- 1. thresholds on the classifier alone


def compare_classifier_thresholds(config: Config, validation: artifacts.ClassifierValidation) -> tuple[dict, str]:
    """The threshold strategies on plain and flip-TTA probabilities; (comparison, name of the one used)."""
    grid = default_grid(config.thresholds.grid_step)
    comparison = {name: compare_strategies(probabilities, validation.labels, grid, config.thresholds.rounds, config.seed)
                  for name, probabilities in (("plain", validation.probabilities),
                                              ("flip_tta", validation.probabilities_flip_tta))}
    table = markdown_table(comparison)
    write_text_atomic(artifacts.THRESHOLD_COMPARISON.path(config.run_dir), table + "\n")
    print(table)
    return comparison, "flip_tta" if config.inference.classifier_flip_tta else "plain"


def plot_classifier_per_class(config: Config, labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray,
                              title: str) -> dict:
    """Per-class AP and F1 before and after tuning, as a PNG; returns the per-class table."""
    f1_tuned = f1_score(labels, apply_thresholds(probabilities, thresholds), average=None, zero_division=0)
    f1_half = f1_score(labels, apply_thresholds(probabilities, 0.5), average=None, zero_division=0)
    average_precision = average_precisions(labels, probabilities)
    plot_per_class_bars({"average precision": average_precision, "F1 at 0.5": f1_half, "F1 at tuned thresholds": f1_tuned},
                        CLASS_NAMES, artifacts.CLASSIFIER_PER_CLASS.path(config.run_dir), title, "score")
    return {name: {"average_precision": None if np.isnan(ap) else float(ap), "f1_at_0.5": float(half),
                   "f1_tuned": float(tuned), "threshold": float(threshold)}
            for name, ap, half, tuned, threshold in zip(CLASS_NAMES, average_precision, f1_half, f1_tuned, thresholds)}


# ---------------------------------------------------------------- the validation images both heads share


class Validation:
    """The images both heads were validated on, their truth, and the segmenter that runs on them."""

    def __init__(self, config: Config, classifier: artifacts.ClassifierValidation, train: ImageSet):
        run_dir = config.run_dir
        splits = artifacts.read_splits(run_dir)
        self.ids = np.intersect1d(classifier.ids, splits.validation_ids)
        if self.ids.size == 0:
            raise ArtifactError(f"the classifier's validation images ({artifacts.CLASSIFIER_VALIDATION.path(run_dir)}) "
                                f"and the run's validation split do not overlap: rerun train-cls "
                                f"(`voc-pipeline run --until tune --force` after data check)")
        source = classifier.probabilities_flip_tta if config.inference.classifier_flip_tta else classifier.probabilities
        self.classifier_probabilities = source[positions_of(classifier.ids, self.ids)]
        positions = positions_of(train.ids, self.ids)
        self.images = [train.images[p] for p in positions]
        self.labels = train.labels[positions]
        self.masks = [np.where(train.masks[p] == 255, 0, train.masks[p]) for p in positions]
        self.boxes = typical_boxes([train.masks[p] for p in positions_of(train.ids, splits.train_ids)])
        self.model, manifest = artifacts.load_segmenter(run_dir)
        self.image_size, self.output_stride = int(manifest["image_size"]), int(manifest["output_stride"])
        self.settings = config.inference

    def maps(self, scales, positions=None):
        """Per image (of `positions`, default all): its probability map averaged over `scales`."""
        images = self.images if positions is None else [self.images[p] for p in positions]
        return probability_maps(self.model, images, self.image_size, self.output_stride, self.settings.batch_size,
                                self.settings.segmenter_flip_tta, scales)


# ---------------------------------------------------------------- 2. scales


def compare_scales(config: Config, validation: Validation) -> tuple[tuple[float, ...], dict, dict]:
    """(chosen scales, figures, per-scale-choice evidence (largest, area) of every validation image)."""
    options = [(1.0,)]
    if tuple(config.inference.segmenter_scales) != (1.0,):
        options.append(tuple(config.inference.segmenter_scales))
    figures, evidence = {}, {}
    for scales in options:
        list(validation.maps(scales, [0]))  # traces the model for these sizes, so the timing below is of predicting
        started, dice, largest, area = time.perf_counter(), [], [], []
        for probabilities, truth in zip(validation.maps(scales), validation.masks):
            dice.append(segmentation_row_score(probabilities.argmax(-1), truth))
            image_largest, image_area = class_evidence(probabilities)
            largest.append(image_largest)
            area.append(image_area)
        name = ", ".join(f"{scale:g}" for scale in scales)
        figures[name] = {"segmentation_dice": float(np.mean(dice)),
                         "seconds_per_image": (time.perf_counter() - started) / len(validation.ids)}
        evidence[scales] = (np.array(largest), np.array(area))
    names = list(figures)
    chosen = options[best_candidate([figures[name]["segmentation_dice"] for name in names])]
    for name, row in figures.items():
        logger.info("segmenter at scales %s: validation Dice %.4f, %.3f s per image", name, row["segmentation_dice"],
                    row["seconds_per_image"])
    return chosen, {"options": figures, "chosen": list(chosen)}, evidence


# ---------------------------------------------------------------- 3. fused evidence


def choose_thresholds_with(strategy: str, grid: np.ndarray, rounds: int):
    """A threshold chooser (probabilities, labels) -> thresholds of the given strategy."""
    if strategy == "global":
        return lambda probabilities, labels: best_global_threshold(probabilities, labels, grid)[0]
    return lambda probabilities, labels: tune_thresholds(probabilities, labels, grid, rounds)[0]


def halves(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    return order[: count // 2], order[count // 2:]


def compare_fusion(config: Config, validation: Validation, largest: np.ndarray, area: np.ndarray,
                   strategy: str) -> tuple[bool, dict]:
    """Fusion against the classifier alone, each with thresholds chosen on one half and scored on the other."""
    grid = default_grid(config.thresholds.grid_step)
    choose = choose_thresholds_with(strategy, grid, config.thresholds.rounds)
    probabilities, labels = validation.classifier_probabilities, validation.labels
    first, second = halves(len(labels), config.seed)
    if min(len(first), len(second)) == 0:
        return False, {"classifier_cross_validated": None, "fused_cross_validated": None, "chosen": "classifier"}
    classifier_total = fused_total = 0.0
    for tune_half, score_half in ((first, second), (second, first)):
        classifier_total += mean_image_f1(probabilities[score_half], labels[score_half],
                                          choose(probabilities[tune_half], labels[tune_half])) * len(score_half)
        model = fit_fusion(probabilities[tune_half], largest[tune_half], area[tune_half], labels[tune_half])
        fused = model.probabilities(probabilities, largest, area)
        fused_total += mean_image_f1(fused[score_half], labels[score_half],
                                     choose(fused[tune_half], labels[tune_half])) * len(score_half)
    classifier_cv, fused_cv = classifier_total / len(labels), fused_total / len(labels)
    use_fusion = fused_cv > classifier_cv
    logger.info("fused evidence: cross-validated classification %.4f against %.4f for the classifier alone: %s",
                fused_cv, classifier_cv, "kept" if use_fusion else "not kept")
    return use_fusion, {"classifier_cross_validated": classifier_cv, "fused_cross_validated": fused_cv,
                        "chosen": "fused" if use_fusion else "classifier"}


# ---------------------------------------------------------------- 4. the joint rule


def score_candidates(validation: Validation, plan: InferencePlan, rules: list[JointRule]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classification row scores (R, N), segmentation row scores (R, N), pixel confusion matrices (R, 21, 21))."""
    classification = np.zeros((len(rules), len(validation.ids)))
    segmentation = np.zeros((len(rules), len(validation.ids)))
    confusion = np.zeros((len(rules), NUM_CLASSES + 1, NUM_CLASSES + 1), dtype=np.int64)
    for image, probabilities in enumerate(validation.maps(plan.scales)):
        largest, area = class_evidence(probabilities)
        _, flags = plan.base_flags(validation.classifier_probabilities[image], largest, area)
        decisions = ImageDecisions(probabilities, flags, area, plan.boxes, plan.tiny_fraction)
        truth = validation.masks[image]
        for index, rule in enumerate(rules):
            final, labels = decisions.decide(rule)
            classification[index, image] = classification_row_scores(final[None], validation.labels[image][None])[0]
            segmentation[index, image] = segmentation_row_score(labels, truth)
            confusion[index] += confusion_matrix(labels, truth)
    return classification, segmentation, confusion


def candidate_table(rules: list[JointRule], classification: np.ndarray, segmentation: np.ndarray) -> list[dict]:
    return [{**rule.to_dict(), "score": float((classification[index].mean() + segmentation[index].mean()) / 2),
             "classification": float(classification[index].mean()), "segmentation": float(segmentation[index].mean())}
            for index, rule in enumerate(rules)]


def save_validation_predictions(config: Config, validation: Validation, plan: InferencePlan, rows: np.ndarray,
                                classification: np.ndarray, segmentation: np.ndarray, confusion: np.ndarray) -> None:
    """The chosen rule on validation: every image's row scores, the pixel confusion matrix, and the worst images'
    flags, probabilities and label maps, recomputed for those images only."""
    worst = np.argsort(rows, kind="stable")[: config.joint.worst_images]
    probabilities, flags, maps = [], [], []
    for position, map_probabilities in zip(worst, validation.maps(plan.scales, worst)):
        source, final, labels = plan.decide(map_probabilities, validation.classifier_probabilities[position])
        probabilities.append(source)
        flags.append(final)
        maps.append(labels)
    save_label_maps_atomic(artifacts.VALIDATION_PREDICTIONS.path(config.run_dir), validation.ids[worst], maps,
                           all_ids=validation.ids, classification_scores=classification, segmentation_scores=segmentation,
                           confusion=confusion, probabilities=np.array(probabilities).reshape(-1, NUM_CLASSES),
                           flags=np.array(flags, dtype=np.int8).reshape(-1, NUM_CLASSES))


def run_tune(config: Config) -> dict:
    """Stage `tune`: writes thresholds.json, threshold_comparison.md, classifier_per_class.png,
    joint_rule.json and validation_predictions.npz; returns the figures of every choice."""
    run_dir = config.run_dir
    classifier = artifacts.read_classifier_validation(run_dir)
    comparison, source_name = compare_classifier_thresholds(config, classifier)
    strategy = comparison[source_name]["chosen_strategy"]
    validation = Validation(config, classifier, load_split(config.data.root, "train"))

    scales, scale_figures, evidence = compare_scales(config, validation)
    largest, area = evidence[scales]
    use_fusion, fusion_figures = (compare_fusion(config, validation, largest, area, strategy) if config.joint.fusion
                                  else (False, {"chosen": "classifier"}))
    grid = default_grid(config.thresholds.grid_step)
    if use_fusion:
        fusion = fit_fusion(validation.classifier_probabilities, largest, area, validation.labels)
        fused = fusion.probabilities(validation.classifier_probabilities, largest, area)
        chosen = compare_strategies(fused, validation.labels, grid, config.thresholds.rounds, config.seed)
        thresholds, labels, source, title = chosen["thresholds"], validation.labels, fused, "fused evidence"
    else:
        fusion, chosen = None, comparison[source_name]
        source = classifier.probabilities_flip_tta if source_name == "flip_tta" else classifier.probabilities
        thresholds, labels, title = chosen["thresholds"], classifier.labels, source_name.replace("_", " ")
    thresholds = thresholds.round(4)
    untuned = [CLASS_NAMES[index] for index in chosen["untuned"]]
    if untuned:
        logger.warning("no validation positive for %s: their thresholds stay at the default %.2f", ", ".join(untuned),
                       DEFAULT_THRESHOLD)
    per_class = plot_classifier_per_class(config, labels, source, thresholds,
                                          f"classifier on {len(labels)} validation images ({title})")

    rules = candidate_rules(config.joint.area_grid)
    plan = InferencePlan(thresholds, fusion, JointRule(), scales, validation.boxes, config.joint.tiny_mask_fraction)
    classification, segmentation, confusion = score_candidates(validation, plan, rules)
    table = candidate_table(rules, classification, segmentation)
    best = best_candidate([row["score"] for row in table])
    plan = InferencePlan(thresholds, fusion, rules[best], scales, validation.boxes, config.joint.tiny_mask_fraction)
    logger.info("joint rule: %s (validation score %.4f; independent heads %.4f)", rules[best].name, table[best]["score"],
                table[0]["score"])
    save_validation_predictions(config, validation, plan, (classification[best] + segmentation[best]) / 2,
                                classification[best], segmentation[best], confusion[best])

    write_json_atomic(artifacts.THRESHOLDS.path(run_dir), {
        "source": "fused" if use_fusion else "classifier",
        "fusion": fusion.to_dict() if fusion else None,
        "strategy": chosen["chosen_strategy"],
        "thresholds": dict(zip(CLASS_NAMES, thresholds.tolist())),
        "classifier_thresholds": dict(zip(CLASS_NAMES, comparison[source_name]["thresholds"].round(4).tolist())),
        "classifier_flip_tta": config.inference.classifier_flip_tta,
        "default_threshold": DEFAULT_THRESHOLD,
        "untuned_classes": untuned,
        "rule": "flag = source probability >= threshold; an image without any flag gets its most probable class",
    })
    write_json_atomic(artifacts.JOINT_RULE.path(run_dir), {
        "rule": rules[best].to_dict(), "scales": list(scales), "segmenter_flip_tta": config.inference.segmenter_flip_tta,
        "tiny_mask_fraction": config.joint.tiny_mask_fraction, "class_boxes": validation.boxes.round(4).tolist(),
        "validation_ids": validation.ids.tolist(), "candidates": table,
    })
    return {"thresholds": {**{name: summary_of(row) for name, row in comparison.items()}, "chosen": source_name,
                           "mean_average_precision": float(np.nanmean(average_precisions(labels, source))),
                           "per_class": per_class},
            "scales": scale_figures, "fusion": fusion_figures,
            "joint": {"chosen": rules[best].name, "validation_images": int(len(validation.ids)), "candidates": table}}
