"""Stage `tune`: every choice made after training, each on validation predictions, in this order:

1. the flag strategy on the classifier's validation (or out-of-fold) probabilities, plain and with flip TTA:
   one global threshold, each image's expected-F1 set under probabilities calibrated by one temperature, and
   one threshold per class, each fitted on half of the images and scored on the other over repeated splits;
   the simplest within one standard error of the best is kept (threshold_comparison.md shows 0.5 beside them);
2. the segmenter's scales: the configured scales against 1.0 alone, by the validation Dice of the
   segmenter's own masks, with the time each costs;
3. the flag source: the classifier alone, the segmenter's class presences (its pixel probabilities pooled per
   class, core.presence), or fused evidence (the classifier's probability combined with the segmenter's
   evidence for each class by a small logistic model), cross-validated; the simplest within the noise of the
   best is kept;
4. the segmenter's temperature, fitted on sampled validation pixels (reliability.png shows both heads);
5. the joint rule (adding classes the segmenter paints, the mask rule, the box fallback), by the competition
   score over both heads, the simplest within the noise of the best, with an estimate of the score off
   validation (the rule chosen on half of the images, scored on the other).
The segmenter runs here on the validation images with the code `predict` runs on the test images, one
batch at a time; three passes (scales, candidates, the worst images) keep memory bounded by a batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import f1_score

from voc_pipeline import artifacts, markdown
from voc_pipeline.config import Config
from voc_pipeline.core.baseline import most_frequent_class
from voc_pipeline.core.calibration import (
    calibrate_sigmoid,
    calibrate_softmax,
    fit_softmax_temperature,
    reliability,
    sample_pixels,
)
from voc_pipeline.core.classes import CLASS_NAMES, NUM_CLASSES, VOID_LABEL
from voc_pipeline.core.fusion import SOURCE_TITLES, FusionModel, compare_flag_sources, fit_fusion
from voc_pipeline.core.joint import (
    InferencePlan,
    JointRule,
    RuleScores,
    candidate_rules,
    candidate_table,
    choose_rule,
    score_rules,
    trivial_wins,
)
from voc_pipeline.core.masks import class_evidence, typical_boxes
from voc_pipeline.core.presence import presence_scores
from voc_pipeline.core.scoring import (
    average_precisions,
    segmentation_row_score,
)
from voc_pipeline.core.selection import bootstrap_interval, choose_scales, halves, held_out_selection, scale_options
from voc_pipeline.core.thresholds import (
    DEFAULT_THRESHOLD,
    FittedFlags,
    apply_thresholds,
    compare_strategies,
    default_grid,
    fit_flags,
    flag_fitter,
)
from voc_pipeline.data.competition import ImageSet, load_split
from voc_pipeline.data.splits import positions_of
from voc_pipeline.errors import ArtifactError
from voc_pipeline.files import save_label_maps_atomic, write_json_atomic, write_text_atomic
from voc_pipeline.models.segmenter import probability_maps
from voc_pipeline.plots import plot_per_class_bars, plot_reliability

logger = logging.getLogger(__name__)


def markdown_table(rows: dict[str, dict]) -> str:
    """The flag-strategy comparison as a markdown table, one row per probability source."""
    return markdown.table(
        ("probabilities", "0.5", "best global (t)", "global, cross-validated", "expected F1 (T)",
         "expected F1, cross-validated", "per-class", "per-class, cross-validated", "chosen"),
        [(name, f"{row['threshold_0.5']:.4f}", f"{row['global']:.4f} ({row['global_threshold']:.2f})",
          f"{row['global_cross_validated']:.4f}", f"{row['expected_f1']:.4f} ({row['temperature']:.2f})",
          f"{row['expected_f1_cross_validated']:.4f}", f"{row['per_class']:.4f}", f"{row['per_class_cross_validated']:.4f}",
          row["chosen_strategy"]) for name, row in rows.items()])


def summary_of(comparison: dict) -> dict:
    return {key: value for key, value in comparison.items() if key not in ("thresholds", "untuned", "cross_validated_rows")}


# ---------------------------------------------------------------- 1. thresholds on the classifier alone


def classifier_source(validation: artifacts.ClassifierValidation, flip_tta: bool) -> tuple[str, np.ndarray]:
    """The one place that picks which of the classifier's validation probabilities the flags use:
    ("flip_tta" or "plain", the (N, 20) probabilities)."""
    if flip_tta:
        return "flip_tta", validation.probabilities_flip_tta
    return "plain", validation.probabilities


def compare_classifier_thresholds(config: Config, validation: artifacts.ClassifierValidation) -> dict:
    """The threshold strategies on plain and flip-TTA probabilities, written as threshold_comparison.md."""
    grid = default_grid(config.thresholds.grid_step)
    comparison = {name: compare_strategies(probabilities, validation.labels, grid, config.thresholds.rounds, config.seed)
                  for name, probabilities in (("plain", validation.probabilities),
                                              ("flip_tta", validation.probabilities_flip_tta))}
    table = markdown_table(comparison)
    write_text_atomic(artifacts.THRESHOLD_COMPARISON.path(config.run_dir), table + "\n")
    print(table)
    return comparison


def plot_classifier_per_class(config: Config, labels: np.ndarray, probabilities: np.ndarray, flags: np.ndarray,
                              thresholds: np.ndarray, title: str) -> dict:
    """Per-class AP and F1 before and after tuning (`flags`: the chosen strategy's), as a PNG; the per-class table."""
    f1_tuned = f1_score(labels, flags, average=None, zero_division=0)
    f1_half = f1_score(labels, apply_thresholds(probabilities, 0.5), average=None, zero_division=0)
    average_precision = average_precisions(labels, probabilities)
    plot_per_class_bars({"average precision": average_precision, "F1 at 0.5": f1_half, "F1 as tuned": f1_tuned},
                        CLASS_NAMES, artifacts.CLASSIFIER_PER_CLASS.path(config.run_dir), title, "score")
    return {name: {"average_precision": None if np.isnan(ap) else float(ap), "f1_at_0.5": float(half),
                   "f1_tuned": float(tuned), "threshold": float(threshold)}
            for name, ap, half, tuned, threshold in zip(CLASS_NAMES, average_precision, f1_half, f1_tuned, thresholds)}


# ---------------------------------------------------------------- the validation images both heads share


class Validation:
    """The images both heads were validated on, their truth, and the segmenter that runs on them."""

    def __init__(self, config: Config, classifier_ids: np.ndarray, classifier_probabilities: np.ndarray, train: ImageSet):
        run_dir = config.run_dir
        splits = artifacts.read_splits(run_dir)
        self.ids = np.intersect1d(classifier_ids, splits.validation_ids)
        if self.ids.size == 0:
            raise ArtifactError(f"the classifier's validation images ({artifacts.CLASSIFIER_VALIDATION.path(run_dir)}) "
                                f"and the run's validation split do not overlap: rerun train-cls "
                                f"(`voc-pipeline run --until tune --force` after data check)")
        self.classifier_probabilities = classifier_probabilities[positions_of(classifier_ids, self.ids)]
        positions = positions_of(train.ids, self.ids)
        self.images = [train.images[p] for p in positions]
        self.labels = train.labels[positions]
        self.masks = [np.where(train.masks[p] == VOID_LABEL, 0, train.masks[p]) for p in positions]
        fit_positions = positions_of(train.ids, splits.train_ids)
        self.boxes = typical_boxes([train.masks[p] for p in fit_positions])
        # The trivial answer's class: the one the training part holds most often.
        self.most_frequent_class = most_frequent_class(train.labels[fit_positions])
        self.model, manifest = artifacts.load_segmenter(run_dir)
        self.image_size, self.output_stride = int(manifest["image_size"]), int(manifest["output_stride"])
        self.settings = config.inference

    def maps(self, scales, positions=None):
        """Per image (of `positions`, default all): its probability map averaged over `scales`."""
        images = self.images if positions is None else [self.images[p] for p in positions]
        return probability_maps(self.model, images, self.image_size, self.output_stride, self.settings.batch_size,
                                self.settings.segmenter_flip_tta, scales)


# ---------------------------------------------------------------- 2. scales


# Pixels per validation image on which the segmenter's temperature is fitted: enough for one number, and memory
# bounded by a few megabytes whatever the images' sizes.
CALIBRATION_PIXELS = 4000


@dataclass
class ScaleChoice:
    """The segmenter's scales chosen on validation, and what the chosen scales' maps said about every image."""

    scales: tuple[float, ...]
    figures: dict
    largest: np.ndarray
    area: np.ndarray
    presence: np.ndarray  # (N, 20) class presences (core.presence)
    pixel_probabilities: np.ndarray  # (P, 21) a sample of validation pixels' probabilities
    pixel_labels: np.ndarray  # (P,) their true labels


def compare_scales(config: Config, validation: Validation) -> ScaleChoice:
    """1.0 alone against the configured scales by the validation Dice of the segmenter's own masks (the more
    scales only when they win by more than the noise), with the time each costs."""
    options = scale_options(config.inference.segmenter_scales)
    if validation.model.input_shape[1] is not None:
        # A model of one input size (a keras-hub ViT or MiT encoder) predicts at scale 1 only.
        logger.info("the segmenter takes one input size: it predicts at scale 1 only, not at %s",
                    scale_name(tuple(config.inference.segmenter_scales)))
        options = [(1.0,)]
    figures, rows, seen = {}, [], []
    for scales in options:
        list(validation.maps(scales, [0]))  # traces the model for these sizes, so the timing below is of predicting
        rng = np.random.default_rng(config.seed)
        started, dice, largest, area, presence, pixels, labels = time.perf_counter(), [], [], [], [], [], []
        for probabilities, truth in zip(validation.maps(scales), validation.masks):
            dice.append(segmentation_row_score(probabilities.argmax(-1), truth))
            image_largest, image_area = class_evidence(probabilities)
            largest.append(image_largest)
            area.append(image_area)
            presence.append(presence_scores(probabilities))
            sampled, sampled_labels = sample_pixels(probabilities, truth, CALIBRATION_PIXELS, rng, VOID_LABEL)
            pixels.append(sampled)
            labels.append(sampled_labels)
        figures[scale_name(scales)] = {"segmentation_dice": float(np.mean(dice)),
                                       "seconds_per_image": (time.perf_counter() - started) / len(validation.ids)}
        rows.append(dice)
        seen.append((np.array(largest), np.array(area), np.array(presence), np.concatenate(pixels),
                     np.concatenate(labels)))
    chosen = choose_scales(options, np.array(rows))
    for name, row in figures.items():
        logger.info("segmenter at scales %s: validation Dice %.4f, %.3f s per image", name, row["segmentation_dice"],
                    row["seconds_per_image"])
    return ScaleChoice(chosen, {"options": figures, "chosen": list(chosen)}, *seen[options.index(chosen)])


def scale_name(scales: tuple[float, ...]) -> str:
    return ", ".join(f"{scale:g}" for scale in scales)


# ---------------------------------------------------------------- 3. the flags' source: classifier, presence or fused


@dataclass(frozen=True)
class FlagSource:
    """What the flags are made from, chosen in step 3.

    Attributes:
        title: for the per-class figure ("flip tta", "plain", "segmenter presence" or "fused evidence").
        probabilities, labels: the source's probabilities and the truth of the images they were tuned on.
        comparison: compare_strategies' result on them (strategy, thresholds, temperature, scores).
        fusion: the fitted fusion model (source "fused"), else None.
        figures: the sources' comparison's figures.
        source: "classifier", "presence" or "fused" (core.fusion.FLAG_SOURCES).
    """

    title: str
    probabilities: np.ndarray
    labels: np.ndarray
    comparison: dict
    fusion: FusionModel | None
    figures: dict
    source: str = "classifier"

    @property
    def strategy(self) -> str:
        return self.comparison["chosen_strategy"]

    @property
    def thresholds(self) -> np.ndarray:
        return self.comparison["thresholds"].round(4)

    @property
    def temperature(self) -> float:
        return round(float(self.comparison["temperature"]), 4)

    @property
    def untuned(self) -> list[str]:
        return [CLASS_NAMES[index] for index in self.comparison["untuned"]]

    def fitted(self) -> FittedFlags:
        return FittedFlags(self.strategy, self.thresholds, self.temperature)


def choose_flag_source(config: Config, validation: Validation, classifier: tuple[str, np.ndarray, np.ndarray],
                       comparison: dict, choice: ScaleChoice) -> FlagSource:
    """The classifier's probabilities (with the strategy step 1 chose on all its validation images), or the
    segmenter's class presences, or fused evidence (each with its strategy chosen again on the images both heads
    saw) when one wins cross-validated by more than the noise; the simplest within the noise of the best.

    Args:
        classifier: (source name, probabilities, labels) of every classifier validation image.
        comparison: step 1's strategy comparison of those probabilities.
        choice: the segmenter's evidence on the validation images, at the chosen scales.
    """
    name, probabilities, labels = classifier
    classifier_alone = FlagSource(name.replace("_", " "), probabilities, labels, comparison, None, {"chosen": "classifier"})
    sources = ("classifier", *(("presence",) if config.joint.presence else ()), *(("fused",) if config.joint.fusion else ()))
    if len(sources) == 1:
        return classifier_alone
    grid = default_grid(config.thresholds.grid_step)
    fitter = flag_fitter(comparison["chosen_strategy"], grid, config.thresholds.rounds)
    outcome = compare_flag_sources(validation.classifier_probabilities, choice.largest, choice.area, choice.presence,
                                   validation.labels, fitter, config.seed, sources)
    logger.info("flag source, cross-validated classification: %s: the %s",
                ", ".join(f"{SOURCE_TITLES[source]} {outcome.cross_validated(source):.4f}" for source in sources),
                SOURCE_TITLES[outcome.chosen])
    if outcome.chosen == "classifier":
        return FlagSource(**{**classifier_alone.__dict__, "figures": outcome.to_dict()})
    fusion = (fit_fusion(validation.classifier_probabilities, choice.largest, choice.area, validation.labels)
              if outcome.chosen == "fused" else None)
    chosen = (fusion.probabilities(validation.classifier_probabilities, choice.largest, choice.area) if fusion
              else choice.presence)
    return FlagSource(SOURCE_TITLES[outcome.chosen], chosen, validation.labels,
                      compare_strategies(chosen, validation.labels, grid, config.thresholds.rounds, config.seed), fusion,
                      outcome.to_dict(), outcome.chosen)


# ---------------------------------------------------------------- 4. the joint rule


def save_validation_predictions(config: Config, validation: Validation, plan: InferencePlan, scores: RuleScores,
                                chosen: int) -> None:
    """The chosen rule on validation: every image's row scores and flag count, the pixel confusion matrix, and
    the worst images' flags, probabilities and label maps, recomputed for those images only."""
    worst = np.argsort(scores.rows[chosen], kind="stable")[: config.joint.worst_images]
    probabilities, flags, maps = [], [], []
    for position, map_probabilities in zip(worst, validation.maps(plan.scales, worst)):
        source, final, labels = plan.decide(map_probabilities, validation.classifier_probabilities[position])
        probabilities.append(source)
        flags.append(final)
        maps.append(labels)
    save_label_maps_atomic(artifacts.VALIDATION_PREDICTIONS.path(config.run_dir), validation.ids[worst], maps,
                           all_ids=validation.ids, classification_scores=scores.classification[chosen],
                           segmentation_scores=scores.segmentation[chosen], confusion=scores.confusion[chosen],
                           flag_counts=scores.flag_counts[chosen],
                           probabilities=np.array(probabilities).reshape(-1, NUM_CLASSES),
                           flags=np.array(flags, dtype=np.int8).reshape(-1, NUM_CLASSES))


def plan_for(config: Config, validation: Validation, fitted: FittedFlags, source: str, fusion: FusionModel | None,
             rule: JointRule, scales: tuple[float, ...], segmenter_temperature: float) -> InferencePlan:
    return InferencePlan(fitted.thresholds, fusion, rule, scales, validation.boxes, config.joint.tiny_mask_fraction,
                         fitted.strategy, fitted.temperature, segmenter_temperature, source)


def cross_fitted_rows(config: Config, validation: Validation, flags: FlagSource, choice: ScaleChoice,
                      segmenter_temperature: float, rules: list[JointRule]) -> np.ndarray:
    """(R, N) every rule's per-image competition rows with the flag source (fusion, thresholds or temperature)
    fitted on the other half of the validation images: rows no image's own truth has tuned."""
    sources = {"classifier": validation.classifier_probabilities, "presence": choice.presence}
    grid = default_grid(config.thresholds.grid_step)
    probabilities, labels = validation.classifier_probabilities, validation.labels
    rows = np.zeros((len(rules), len(labels)))
    first, second = halves(len(labels), config.seed)
    for fit, score in ((first, second), (second, first)):
        fusion = (fit_fusion(probabilities[fit], choice.largest[fit], choice.area[fit], labels[fit])
                  if flags.source == "fused" else None)
        source = fusion.probabilities(probabilities, choice.largest, choice.area) if fusion else sources[flags.source]
        fitted = fit_flags(flags.strategy, source[fit], labels[fit], grid, config.thresholds.rounds)
        plan = plan_for(config, validation, fitted, flags.source, fusion, JointRule(), choice.scales,
                        segmenter_temperature)
        scores = score_rules(validation.maps(choice.scales, score), probabilities[score], labels[score],
                             [validation.masks[position] for position in score], plan, rules)
        rows[:, score] = scores.rows
    return rows


# Splits into halves behind the honest estimate of the joint rule's choice, and the bootstrap interval's level.
ESTIMATE_REPEATS, INTERVAL_LEVEL = 10, 0.9


def choose_joint_rule(config: Config, validation: Validation, flags: FlagSource, choice: ScaleChoice,
                      segmenter_temperature: float) -> tuple[InferencePlan, list[dict], dict]:
    """Every candidate rule scored by the competition score on validation; the simplest within the noise of the
    best is chosen. Returns (the plan, the candidate table, the estimate) and saves the chosen rule's validation
    predictions. The estimate is honest: the rule chosen on half of the images with the flag source fitted
    without them, scored on the other half, repeated; with a bootstrap interval over images."""
    rules = candidate_rules(config.joint.area_grid)
    trivial = JointRule(trivial_class=validation.most_frequent_class)
    plan = plan_for(config, validation, flags.fitted(), flags.source, flags.fusion, JointRule(), choice.scales,
                    segmenter_temperature)
    # The trivial answer is scored beside the candidates, never chosen among them: only when it beats the chosen
    # rule's honest estimate (below).
    scores = score_rules(validation.maps(plan.scales), validation.classifier_probabilities, validation.labels,
                         validation.masks, plan, [*rules, trivial])
    table = candidate_table([*rules, trivial], scores.classification, scores.segmentation)
    chosen = choose_rule(scores.rows[:-1])
    honest = held_out_selection(cross_fitted_rows(config, validation, flags, choice, segmenter_temperature, rules),
                                config.seed, ESTIMATE_REPEATS)
    low, high = bootstrap_interval(honest, config.seed, INTERVAL_LEVEL)
    estimate = {"score": float(honest.mean()), "interval": [low, high], "level": INTERVAL_LEVEL,
                "in_sample": table[chosen]["score"], "best_in_sample": max(row["score"] for row in table[:-1]),
                "classes_per_image": float(scores.flag_counts[chosen].mean()),
                "true_classes_per_image": float(validation.labels.sum(1).mean()),
                "trivial": table[-1]["score"], "fell_back": trivial_wins(honest, scores.rows[-1])}
    logger.info("joint rule: %s (validation %.4f in-sample; %.4f [%.4f, %.4f] cross-fitted and chosen on the other half; "
                "independent heads %.4f; the trivial answer %.4f)", rules[chosen].name, table[chosen]["score"],
                estimate["score"], low, high, table[0]["score"], estimate["trivial"])
    if estimate["fell_back"]:
        logger.warning("THE TRIVIAL ANSWER WINS: %s scores %.4f on validation, above the chosen rule's honest estimate "
                       "%.4f: the submission falls back to it. The models learnt less than the most frequent class "
                       "tells; train longer, on more images, or from pretrained weights", trivial.name,
                       estimate["trivial"], estimate["score"])
        chosen = len(rules)
    plan = plan_for(config, validation, flags.fitted(), flags.source, flags.fusion, [*rules, trivial][chosen],
                    choice.scales, segmenter_temperature)
    save_validation_predictions(config, validation, plan, scores, chosen)
    return plan, table, estimate


# ---------------------------------------------------------------- calibration


def calibrate_segmenter(config: Config, choice: ScaleChoice, flags: FlagSource) -> tuple[float, dict]:
    """The segmenter's temperature fitted on the sampled validation pixels, and the reliability figure of both
    heads (before and after calibration); returns (temperature, figures)."""
    temperature = round(fit_softmax_temperature(choice.pixel_probabilities, choice.pixel_labels), 4)
    curves = {}
    # The flags' probabilities: the classifier's, or the source tune chose instead.
    source = "classifier" if flags.source == "classifier" else SOURCE_TITLES[flags.source]
    for name, probabilities, outcomes in (
            (source, flags.probabilities, flags.labels),
            ("segmenter (most probable label)", choice.pixel_probabilities.max(-1),
             choice.pixel_probabilities.argmax(-1) == choice.pixel_labels)):
        curves[f"{name}, as trained"] = reliability(probabilities, outcomes)
    classifier_t = flags.temperature if flags.source == "classifier" else 1.0
    curves[f"{source}, T = {classifier_t:.2f}"] = reliability(calibrate_sigmoid(flags.probabilities, classifier_t),
                                                                flags.labels)
    calibrated = calibrate_softmax(choice.pixel_probabilities, temperature)
    curves[f"segmenter, T = {temperature:.2f}"] = reliability(calibrated.max(-1),
                                                              calibrated.argmax(-1) == choice.pixel_labels)
    plot_reliability(curves, artifacts.RELIABILITY.path(config.run_dir))
    logger.info("calibration: classifier T %.2f, segmenter T %.2f (expected calibration error %s)", classifier_t,
                temperature, ", ".join(f"{name} {curve['ece']:.3f}" for name, curve in curves.items()))
    return temperature, {"classifier_temperature": classifier_t, "segmenter_temperature": temperature,
                         "expected_calibration_error": {name: curve["ece"] for name, curve in curves.items()}}


# ---------------------------------------------------------------- the stage


def write_choices(config: Config, flags: FlagSource, classifier_comparison: dict, plan: InferencePlan,
                  validation: Validation, table: list[dict], estimate: dict) -> None:
    """thresholds.json and joint_rule.json: what predict applies to the test images."""
    rule = ("flags = each image's expected-F1 set of the source probabilities calibrated by the temperature"
            if plan.flag_strategy == "expected-f1" else "flag = source probability >= threshold")
    write_json_atomic(artifacts.THRESHOLDS.path(config.run_dir), {
        "source": flags.source,
        "fusion": flags.fusion.to_dict() if flags.fusion else None,
        "strategy": plan.flag_strategy,
        "temperature": plan.classifier_temperature,
        "thresholds": dict(zip(CLASS_NAMES, flags.thresholds.tolist())),
        "classifier_thresholds": dict(zip(CLASS_NAMES, classifier_comparison["thresholds"].round(4).tolist())),
        "classifier_flip_tta": config.inference.classifier_flip_tta,
        "default_threshold": DEFAULT_THRESHOLD,
        "untuned_classes": flags.untuned,
        "rule": rule + "; an image without any flag gets its most probable class",
    })
    write_json_atomic(artifacts.JOINT_RULE.path(config.run_dir), {
        "rule": plan.rule.to_dict(), "scales": list(plan.scales), "segmenter_temperature": plan.segmenter_temperature,
        "segmenter_flip_tta": config.inference.segmenter_flip_tta, "tiny_mask_fraction": plan.tiny_fraction,
        "class_boxes": validation.boxes.round(4).tolist(), "validation_ids": validation.ids.tolist(),
        "estimate": estimate, "candidates": table,
    })


def run_tune(config: Config) -> dict:
    """Stage `tune`: writes thresholds.json, threshold_comparison.md, classifier_per_class.png, reliability.png,
    joint_rule.json and validation_predictions.npz; returns the figures of every choice."""
    classifier = artifacts.read_classifier_validation(config.run_dir)
    source_name, source_probabilities = classifier_source(classifier, config.inference.classifier_flip_tta)
    comparison = compare_classifier_thresholds(config, classifier)
    validation = Validation(config, classifier.ids, source_probabilities, load_split(config.data.root, "train"))
    choice = compare_scales(config, validation)
    flags = choose_flag_source(config, validation, (source_name, source_probabilities, classifier.labels),
                               comparison[source_name], choice)
    if flags.untuned:
        logger.warning("no validation positive for %s: their thresholds stay at the default %.2f",
                       ", ".join(flags.untuned), DEFAULT_THRESHOLD)
    per_class = plot_classifier_per_class(config, flags.labels, flags.probabilities,
                                          flags.fitted().flags(flags.probabilities), flags.thresholds,
                                          f"classifier on {len(flags.labels)} validation images ({flags.title}, "
                                          f"{flags.strategy})")
    segmenter_temperature, calibration = calibrate_segmenter(config, choice, flags)
    plan, table, estimate = choose_joint_rule(config, validation, flags, choice, segmenter_temperature)
    write_choices(config, flags, comparison[source_name], plan, validation, table, estimate)
    return {"thresholds": {**{name: summary_of(row) for name, row in comparison.items()}, "chosen": source_name,
                           "strategy": plan.flag_strategy,
                           "mean_average_precision": float(np.nanmean(average_precisions(flags.labels, flags.probabilities))),
                           "per_class": per_class},
            "scales": choice.figures, "flag_sources": flags.figures, "calibration": calibration,
            "joint": {"chosen": plan.rule.name, "validation_images": int(len(validation.ids)), "estimate": estimate,
                      "candidates": table}}
