"""Stage `evaluate`: the validation split scored the competition's way, next to the trivial baseline,
with per-class tables, written as `report.md` beside the run's figures."""

from __future__ import annotations

import logging

import numpy as np

from voc_pipeline.baseline import baseline_flags, centre_box_map, most_frequent_class
from voc_pipeline.classes import CLASS_NAMES
from voc_pipeline.config import Config
from voc_pipeline.data import load_train_and_splits
from voc_pipeline.files import write_text_atomic
from voc_pipeline.joint import score_predictions
from voc_pipeline.plots import plt, save_figure
from voc_pipeline.prediction import tune_joint_rule, validation_predictions
from voc_pipeline.run_folder import prepare_run_folder, read_metrics, update_metrics
from voc_pipeline.splits import positions_of

logger = logging.getLogger(__name__)

REPORT_FILE = "report.md"
FIGURES = [
    ("classifier_curves.png", "Classifier learning curves"),
    ("classifier_per_class.png", "Classifier per class: average precision and F1 before and after threshold tuning"),
    ("segmenter_curves.png", "Segmenter learning curves"),
    ("segmenter_per_class.png", "Segmenter IoU per class"),
    ("segmenter_overlays.png", "Validation images: truth and prediction"),
    ("score_comparison.png", "Competition score on validation"),
]


def baseline_scores(fit_labels: np.ndarray, true_labels: np.ndarray, true_maps: list[np.ndarray]) -> dict[str, float]:
    """The most-frequent-class answer (of the training part) with a centre box mask, scored on validation images."""
    class_index = most_frequent_class(fit_labels)
    maps = [centre_box_map(*truth.shape, class_index) for truth in true_maps]
    return score_predictions(baseline_flags(fit_labels, len(true_labels)), maps, true_labels, true_maps)


def plot_score_comparison(rows: dict[str, dict[str, float]], path) -> None:
    """Grouped bars of the overall, classification and segmentation scores of each answer."""
    figure, axis = plt.subplots(figsize=(8, 3.6))
    kinds = ("score", "classification", "segmentation")
    width = 0.8 / len(rows)
    for offset, (name, row) in enumerate(rows.items()):
        positions = np.arange(len(kinds)) + offset * width - 0.4 + width / 2
        bars = axis.bar(positions, [row[kind] for kind in kinds], width, label=name)
        axis.bar_label(bars, fmt="%.3f", fontsize=7)
    axis.set_xticks(np.arange(len(kinds)))
    axis.set_xticklabels(["overall", "classification rows", "segmentation rows"])
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("mean Dice")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    save_figure(figure, path)


def score_table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| answer | overall | classification rows | segmentation rows |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {row['score']:.4f} | {row['classification']:.4f} | {row['segmentation']:.4f} |"
              for name, row in rows.items()]
    return "\n".join(lines)


def per_class_table(metrics: dict) -> str:
    thresholds = metrics.get("thresholds", {}).get("per_class", {})
    iou = metrics.get("segmenter", {}).get("iou_per_class", {})
    fmt = lambda value: "-" if value is None else f"{value:.3f}"  # noqa: E731
    lines = ["| class | threshold | average precision | F1 at 0.5 | F1 tuned | IoU |", "| --- | --- | --- | --- | --- | --- |"]
    for name in CLASS_NAMES:
        row = thresholds.get(name, {})
        lines.append(f"| {name} | {fmt(row.get('threshold'))} | {fmt(row.get('average_precision'))} | "
                     f"{fmt(row.get('f1_at_0.5'))} | {fmt(row.get('f1_tuned'))} | {fmt(iou.get(name))} |")
    return "\n".join(lines)


def run_evaluate(config: Config) -> dict:
    """Stage `evaluate`: writes report.md, score_comparison.png and the `evaluate` section of metrics.json."""
    run_dir = prepare_run_folder(config, "evaluate")
    train, splits = load_train_and_splits(config)
    validation = validation_predictions(config, train)
    rule, table = tune_joint_rule(config, validation)
    ids, _, _, labels, masks = validation
    fit_labels = train.labels[positions_of(train.ids, splits.train_ids)]
    rows = {
        "most frequent class + centre box": baseline_scores(fit_labels, labels, masks),
        "independent heads": table[0],
        f"joint rule ({rule.name})": next(row for row in table if row["name"] == rule.name),
    }
    rows = {name: {kind: float(row[kind]) for kind in ("score", "classification", "segmentation")} for name, row in rows.items()}
    plot_score_comparison(rows, run_dir / "score_comparison.png")
    metrics = read_metrics(config)
    classifier, segmenter = metrics.get("classifier", {}), metrics.get("segmenter", {})
    threshold_table = (run_dir / "threshold_comparison.md").read_text() if (run_dir / "threshold_comparison.md").exists() else ""
    sections = [
        f"# Run `{config.run_name}`: validation report",
        f"{len(ids)} validation images (held out from training; thresholds and the joint rule were chosen on them, "
        "so the tuned figures are slightly optimistic: see the cross-validated column below).",
        "## Competition score", score_table(rows),
        "## Classifier",
        f"Backbone `{config.classifier.backbone}` at {config.classifier.image_size} px, loss `{config.classifier.loss}`. "
        f"Validation mAP {classifier.get('mean_average_precision', float('nan')):.4f} "
        f"(flip TTA {classifier.get('mean_average_precision_flip_tta', float('nan')):.4f}).",
        "Classification score (mean per-image F1) by threshold strategy:", threshold_table,
        "## Segmenter",
        f"DeepLabV3+ on `{config.segmenter.backbone}`, output stride {config.segmenter.output_stride}, "
        f"{config.segmenter.image_size} px. Validation mIoU {segmenter.get('mean_iou', float('nan')):.4f}, "
        f"segmentation-row Dice {segmenter.get('segmentation_dice', float('nan')):.4f} "
        f"(without flip TTA: {segmenter.get('segmentation_dice_without_flip_tta', float('nan')):.4f}).",
        "## Per class", per_class_table(metrics),
        "## Figures",
    ]
    sections += [f"### {title}\n![{title}]({name})" for name, title in FIGURES if (run_dir / name).exists()]
    if (run_dir / "attack" / "attack.md").exists():
        sections += ["## Adversarial attacks", "See [attack/attack.md](attack/attack.md)."]
    write_text_atomic(run_dir / REPORT_FILE, "\n\n".join(sections) + "\n")
    summary = {"validation_images": len(ids), "scores": rows, "joint_rule": rule.name}
    update_metrics(config, "evaluate", summary)
    print(score_table(rows))
    return summary

