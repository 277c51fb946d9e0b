"""Stage `evaluate`: the validation split scored the competition's way, next to the trivial baseline,
with per-class tables, written as `report.md` beside the run's figures."""

from __future__ import annotations

import logging

import numpy as np

from voc_pipeline import artifacts, markdown
from voc_pipeline.config import Config
from voc_pipeline.core.baseline import baseline_flags, centre_box_map, most_frequent_class
from voc_pipeline.core.classes import CLASS_NAMES
from voc_pipeline.core.joint import score_predictions
from voc_pipeline.data.competition import load_split
from voc_pipeline.data.splits import positions_of
from voc_pipeline.files import write_text_atomic
from voc_pipeline.plots import plot_confusion, plot_mask_overlays, plot_score_comparison
from voc_pipeline.report_parts import (
    REPORT_FIGURES,
    choices_section,
    figures,
    final_models_text,
    score_table,
    segmenter_design,
    self_training_part,
    training_text,
)

logger = logging.getLogger(__name__)

# Classes per image predicted on the test set against validation: a gap this large says the choices made on
# validation do not carry over to the test images.
CLASSES_PER_IMAGE_WARNING = 0.5


def baseline_scores(fit_labels: np.ndarray, true_labels: np.ndarray, true_maps: list[np.ndarray]) -> dict[str, float]:
    """The most-frequent-class answer (of the training part) with a centre box mask, scored on validation images."""
    class_index = most_frequent_class(fit_labels)
    maps = [centre_box_map(*truth.shape, class_index) for truth in true_maps]
    return score_predictions(baseline_flags(fit_labels, len(true_labels)), maps, true_labels, true_maps)


def per_class_table(tuning: dict, segmenter: dict) -> str:
    thresholds = tuning.get("per_class", {})
    iou = segmenter.get("iou_per_class", {})
    fmt = lambda value: "-" if value is None else f"{value:.3f}"  # noqa: E731
    rows = [(name, *(fmt(thresholds.get(name, {}).get(key)) for key in ("threshold", "average_precision", "f1_at_0.5",
                                                                          "f1_tuned")), fmt(iou.get(name)))
            for name in CLASS_NAMES]
    return markdown.table(("class", "threshold", "average precision", "F1 at 0.5", "F1 tuned", "IoU"), rows)


def flag_text(flags: np.ndarray, probabilities: np.ndarray) -> str:
    return ", ".join(f"{CLASS_NAMES[index]} {probabilities[index]:.2f}" for index in np.flatnonzero(flags)) or "-"


def plot_mistakes(run_dir, train) -> None:
    """The worst validation images (image, truth, prediction; row scores, flags with their probabilities) and the
    pixel confusion heatmap of the chosen rule."""
    arrays, label_maps = artifacts.read_validation_predictions(run_dir)
    scores = dict(zip(arrays["all_ids"].tolist(), zip(arrays["classification_scores"], arrays["segmentation_scores"])))
    positions = positions_of(train.ids, arrays["ids"])
    if len(positions):
        titles = [f"image {image_id}: classification F1 {scores[int(image_id)][0]:.2f}, mask Dice "
                  f"{scores[int(image_id)][1]:.2f}\nflags: {flag_text(flags, probabilities)}"
                  for image_id, flags, probabilities in zip(arrays["ids"], arrays["flags"], arrays["probabilities"])]
        plot_mask_overlays([train.images[p] for p in positions], [train.masks[p] for p in positions], label_maps,
                           titles, CLASS_NAMES, artifacts.WORST_IMAGES.path(run_dir))
    plot_confusion(arrays["confusion"], ("background", *CLASS_NAMES), artifacts.PIXEL_CONFUSION.path(run_dir),
                   f"pixels of {len(arrays['all_ids'])} validation images (rows: truth)")


def chosen_row(table: list[dict], name: str, run_dir) -> dict:
    """The candidate-table row of the chosen rule, or an ArtifactError when joint_rule.json does not hold it."""
    for row in table:
        if row["name"] == name:
            return row
    raise artifacts.unreadable(artifacts.JOINT_RULE.path(run_dir), artifacts.JOINT_RULE.stage,
                               f"its chosen rule {name!r} is not among its {len(table)} candidates")


def estimate_section(estimate: dict, test_flags: np.ndarray) -> tuple[list[str], dict]:
    """How well the chosen answer should do off validation, and whether the test set looks like validation:
    (report lines, figures)."""
    low, high = estimate["interval"]
    test_classes = float(test_flags.sum(1).mean()) if len(test_flags) else float("nan")
    figures = {"estimate": estimate["score"], "interval": [low, high], "in_sample": estimate["in_sample"],
               "classes_per_image": {"truth_validation": estimate["true_classes_per_image"],
                                     "predicted_validation": estimate["classes_per_image"], "predicted_test": test_classes}}
    lines = [f"**What to expect off validation: {estimate['score']:.4f}** ({estimate['level']:.0%} bootstrap interval "
             f"over images [{low:.4f}, {high:.4f}]). The joint rule is chosen on half of the validation images, with "
             f"the flags fitted on the images it is not scored on, and scored on the other half, over repeated splits. "
             f"In-sample the chosen rule scores {estimate['in_sample']:.4f} (the best candidate "
             f"{estimate['best_in_sample']:.4f}): the difference is what choosing on the same images overstates.",
             markdown.table(("classes per image", "truth (validation)", "predicted (validation)", "predicted (test)"),
                            [("mean", estimate["true_classes_per_image"], estimate["classes_per_image"], test_classes)])]
    if estimate.get("fell_back"):
        lines.append(f"**Warning: the trivial answer wins.** The most frequent class with a centre box scores "
                     f"{estimate['trivial']:.4f} on validation, above the chosen rule's honest estimate "
                     f"{estimate['score']:.4f}, so the submission is that trivial answer: the models learnt less than "
                     f"the most frequent class tells. Train longer, on more images, or from pretrained weights.")
    if abs(test_classes - estimate["classes_per_image"]) > CLASSES_PER_IMAGE_WARNING:
        lines.append(f"**Warning:** the test images get {test_classes:.2f} classes each against "
                     f"{estimate['classes_per_image']:.2f} on validation: the probabilities behave differently on the "
                     f"test set, and the validation figures above may not carry over.")
    return lines, figures


def run_evaluate(config: Config) -> dict:
    """Stage `evaluate`: writes report.md and score_comparison.png; returns the validation scores."""
    run_dir = config.run_dir
    rule, joint = artifacts.read_joint_rule(run_dir)
    ids = np.asarray(joint["validation_ids"], dtype=np.int64)
    train = load_split(config.data.root, "train")
    splits = artifacts.read_splits(run_dir)
    truth_positions = positions_of(train.ids, ids)
    labels, masks = train.labels[truth_positions], [train.masks[p] for p in truth_positions]
    fit_labels = train.labels[positions_of(train.ids, splits.train_ids)]
    table = joint["candidates"]
    rows = {
        "most frequent class + centre box": baseline_scores(fit_labels, labels, masks),
        "independent heads": table[0],
        f"joint rule ({rule.name})": chosen_row(table, rule.name, run_dir),
    }
    rows = {name: {kind: float(row[kind]) for kind in ("score", "classification", "segmentation")} for name, row in rows.items()}
    plot_score_comparison(rows, artifacts.SCORE_COMPARISON.path(run_dir))
    classifier_manifest = artifacts.read_json(artifacts.CLASSIFIER_MANIFEST, run_dir)
    segmenter_manifest = artifacts.read_json(artifacts.SEGMENTER_MANIFEST, run_dir)
    classifier, segmenter = artifacts.read_metrics(run_dir, "train-cls"), artifacts.read_metrics(run_dir, "train-seg")
    tuning = artifacts.read_metrics(run_dir, "tune")
    plot_mistakes(run_dir, train)
    test_arrays, _ = artifacts.read_test_predictions(run_dir)
    estimate_lines, estimate_figures = (estimate_section(joint["estimate"], test_arrays["flags"]) if "estimate" in joint
                                        else ([], {}))
    threshold_table = artifacts.THRESHOLD_COMPARISON.require(run_dir).read_text()
    sections = [
        f"# Run `{config.run_name}`: validation report",
        f"{len(ids)} validation images (held out from training; thresholds and the joint rule were chosen on them, "
        "so the tuned figures are slightly optimistic: see the cross-validated column below).",
        "## Competition score", score_table(rows), *estimate_lines,
        "## Classifier",
        f"Backbone `{classifier_manifest['backbone']}` at {classifier_manifest['image_size']} px, loss "
        f"`{classifier_manifest['loss']}`. Validation mAP {classifier['mean_average_precision']:.4f} "
        f"(flip TTA {classifier['mean_average_precision_flip_tta']:.4f}). "
        + training_text(artifacts.read_training_facts(artifacts.CLASSIFIER_MANIFEST, run_dir)),
        "Classification score (mean per-image F1) by threshold strategy:", threshold_table,
        "## Segmenter",
        f"{segmenter_design(segmenter_manifest, artifacts.read_config(run_dir)['segmenter'])} "
        f"Validation mIoU {segmenter['mean_iou']:.4f}, "
        f"segmentation-row Dice {segmenter['segmentation_dice']:.4f} "
        f"(without flip TTA: {segmenter['segmentation_dice_without_flip_tta']:.4f}). "
        + training_text(artifacts.read_training_facts(artifacts.SEGMENTER_MANIFEST, run_dir)),
        "## What tune chose on validation", *choices_section(tuning),
        "## Per class", per_class_table(tuning["thresholds"], segmenter),
        "## Figures",
    ]
    sections += [f"### {figure.title}\n![{figure.title}]({figure.path.relative_to(run_dir).as_posix()})"
                 for figure in figures(run_dir, REPORT_FIGURES)]
    sections += ["## Test predictions", final_models_text(artifacts.read_json(artifacts.FINAL_MODELS, run_dir))]
    self_training = [block if isinstance(block, str) else f"![{block.title}]({block.path.relative_to(run_dir).as_posix()})"
                     for block in self_training_part(run_dir)]
    sections += ["## Self-training", *self_training] if self_training else []
    sections += ["## Adversarial attacks",
                 "`voc-pipeline attack` (stage attack) attacks this run's models and writes [attack/attack.md](attack/attack.md)."]
    write_text_atomic(artifacts.REPORT.path(run_dir), "\n\n".join(sections) + "\n")
    print(score_table(rows))
    return {"validation_images": len(ids), "scores": rows, "joint_rule": rule.name, **estimate_figures}
