"""Stage `tune`: per-class thresholds for the classification score, and the report that justifies them.

Reads the validation (or out-of-fold) probabilities of `train-cls`, chooses thresholds with the pure
NumPy tuner, and reports side by side: threshold 0.5, the best single global threshold, and per-class
thresholds, with and without flip test-time augmentation. Because thresholds tuned on the same images
look better than they are, both tuned strategies are also scored cross-validated (tuned on one half,
scored on the other, and the other way round), and the better of the two there is the one saved.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import f1_score

from voc_pipeline.classes import CLASS_NAMES
from voc_pipeline.classifier_training import VALIDATION_FILE, average_precisions
from voc_pipeline.config import Config
from voc_pipeline.files import write_json_atomic, write_text_atomic
from voc_pipeline.plots import plot_per_class_bars
from voc_pipeline.run_folder import prepare_run_folder, require_artifact, update_metrics
from voc_pipeline.thresholds import (
    DEFAULT_THRESHOLD,
    apply_thresholds,
    best_global_threshold,
    default_grid,
    mean_image_f1,
    tune_thresholds,
)

logger = logging.getLogger(__name__)

THRESHOLDS_FILE = "thresholds.json"


def cross_validated_score(probabilities: np.ndarray, labels: np.ndarray, choose_thresholds, seed: int) -> float:
    """Mean per-image F1 of thresholds scored on images they were not chosen on.

    The images are split in two halves; thresholds chosen by `choose_thresholds(probabilities, labels)`
    on one half are scored on the other, and the other way round.
    """
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2:])
    if min(len(half) for half in halves) == 0:
        return float("nan")
    total = 0.0
    for tune_half, score_half in (halves, halves[::-1]):
        thresholds = choose_thresholds(probabilities[tune_half], labels[tune_half])
        total += mean_image_f1(probabilities[score_half], labels[score_half], thresholds) * len(score_half)
    return float(total / len(labels))


def compare_strategies(probabilities: np.ndarray, labels: np.ndarray, grid: np.ndarray, rounds: int, seed: int) -> dict:
    """Classification score at 0.5, at the best global threshold and at tuned per-class thresholds.

    The tuned strategies are also scored cross-validated; `chosen` is the one (global or per-class) that
    does better there, so per-class thresholds are used only where the validation set supports them.
    """
    global_threshold, global_score = best_global_threshold(probabilities, labels, grid)
    per_class_thresholds, untuned = tune_thresholds(probabilities, labels, grid, rounds)
    per_class_cv = cross_validated_score(probabilities, labels, lambda p, y: tune_thresholds(p, y, grid, rounds)[0], seed)
    global_cv = cross_validated_score(probabilities, labels, lambda p, y: best_global_threshold(p, y, grid)[0], seed)
    use_per_class = not per_class_cv < global_cv
    return {
        "threshold_0.5": mean_image_f1(probabilities, labels, 0.5),
        "global_threshold": global_threshold,
        "global": global_score,
        "global_cross_validated": global_cv,
        "per_class": mean_image_f1(probabilities, labels, per_class_thresholds),
        "per_class_cross_validated": per_class_cv,
        "chosen_strategy": "per-class" if use_per_class else "global",
        "thresholds": per_class_thresholds if use_per_class else np.full(labels.shape[1], global_threshold),
        "untuned": untuned if use_per_class else [],
    }


def markdown_table(rows: dict[str, dict]) -> str:
    """The comparison as a markdown table, one row per probability source."""
    lines = ["| probabilities | 0.5 | best global (t) | global, cross-validated | per-class | per-class, cross-validated | chosen |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['threshold_0.5']:.4f} | {row['global']:.4f} ({row['global_threshold']:.2f}) | "
                     f"{row['global_cross_validated']:.4f} | {row['per_class']:.4f} | "
                     f"{row['per_class_cross_validated']:.4f} | {row['chosen_strategy']} |")
    return "\n".join(lines)


def run_tune(config: Config) -> dict:
    """Stage `tune`: writes thresholds.json, threshold_comparison.md, classifier_per_class.png and the
    `thresholds` section of metrics.json; returns that section."""
    run_dir = prepare_run_folder(config, "tune")
    with np.load(require_artifact(config, VALIDATION_FILE, "train-cls"), allow_pickle=False) as saved:
        labels, plain, flipped = saved["labels"], saved["probabilities"], saved["probabilities_flip_tta"]
    grid = default_grid(config.thresholds.grid_step)
    comparison = {
        "plain": compare_strategies(plain, labels, grid, config.thresholds.rounds, config.seed),
        "flip_tta": compare_strategies(flipped, labels, grid, config.thresholds.rounds, config.seed),
    }
    chosen_name = "flip_tta" if config.classifier.flip_tta else "plain"
    chosen, probabilities = comparison[chosen_name], (flipped if config.classifier.flip_tta else plain)
    untuned_names = [CLASS_NAMES[index] for index in chosen["untuned"]]
    if untuned_names:
        logger.warning("no validation positive for %s: their thresholds stay at the default %.2f",
                       ", ".join(untuned_names), DEFAULT_THRESHOLD)
    write_json_atomic(run_dir / THRESHOLDS_FILE, {
        "strategy": chosen["chosen_strategy"],
        "thresholds": dict(zip(CLASS_NAMES, chosen["thresholds"].round(4).tolist())),
        "flip_tta": config.classifier.flip_tta,
        "default_threshold": DEFAULT_THRESHOLD,
        "untuned_classes": untuned_names,
        "rule": "flag = probability >= threshold; an image without any flag gets its most probable class",
    })
    table = markdown_table(comparison)
    write_text_atomic(run_dir / "threshold_comparison.md", table + "\n")
    print(table)

    flags_tuned = apply_thresholds(probabilities, chosen["thresholds"])
    flags_half = apply_thresholds(probabilities, 0.5)
    f1_tuned = f1_score(labels, flags_tuned, average=None, zero_division=0)
    f1_half = f1_score(labels, flags_half, average=None, zero_division=0)
    average_precision = average_precisions(labels, probabilities)
    plot_per_class_bars({"average precision": average_precision, "F1 at 0.5": f1_half, "F1 at tuned thresholds": f1_tuned},
                        CLASS_NAMES, run_dir / "classifier_per_class.png",
                        f"classifier on {len(labels)} validation images ({chosen_name.replace('_', ' ')})", "score")
    metrics = {
        name: {key: value for key, value in row.items() if key not in ("thresholds", "untuned")}
        for name, row in comparison.items()
    }
    metrics["chosen"] = chosen_name
    metrics["mean_average_precision"] = float(np.nanmean(average_precision))
    metrics["per_class"] = {name: {"average_precision": None if np.isnan(ap) else float(ap), "f1_at_0.5": float(half),
                                   "f1_tuned": float(tuned), "threshold": float(threshold)}
                            for name, ap, half, tuned, threshold in zip(CLASS_NAMES, average_precision, f1_half,
                                                                        f1_tuned, chosen["thresholds"])}
    update_metrics(config, "thresholds", metrics)
    return metrics
