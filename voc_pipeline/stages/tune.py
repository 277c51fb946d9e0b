"""Stage `tune`: per-class thresholds for the classification score, then the joint rule between the heads.

Both are chosen on validation predictions only, written by the training stages:
- thresholds, from the classifier's validation (or out-of-fold) probabilities: threshold 0.5, the best
  single global threshold and per-class thresholds side by side, with and without flip TTA. Thresholds
  tuned on the same images look better than they are, so both tuned strategies are also scored
  cross-validated, and the better of the two there is the one saved;
- the joint rule, from the tuned flags and the segmenter's validation label maps, by the competition
  score on the images both heads were validated on.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import f1_score

from voc_pipeline import artifacts
from voc_pipeline.config import Config
from voc_pipeline.core.classes import CLASS_NAMES
from voc_pipeline.core.joint import choose_joint_rule
from voc_pipeline.core.scoring import average_precisions
from voc_pipeline.core.thresholds import DEFAULT_THRESHOLD, apply_thresholds, compare_strategies, default_grid
from voc_pipeline.data.competition import load_split
from voc_pipeline.data.splits import positions_of
from voc_pipeline.errors import ArtifactError
from voc_pipeline.files import write_json_atomic, write_text_atomic
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


def choose_thresholds(config: Config, validation: artifacts.ClassifierValidation, flip_tta: bool) -> tuple[np.ndarray, dict]:
    """Choose and write the thresholds (thresholds.json, threshold_comparison.md, classifier_per_class.png);
    returns (the thresholds as written, the figures)."""
    run_dir = config.run_dir
    labels, plain, flipped = validation.labels, validation.probabilities, validation.probabilities_flip_tta
    grid = default_grid(config.thresholds.grid_step)
    comparison = {
        "plain": compare_strategies(plain, labels, grid, config.thresholds.rounds, config.seed),
        "flip_tta": compare_strategies(flipped, labels, grid, config.thresholds.rounds, config.seed),
    }
    chosen_name = "flip_tta" if flip_tta else "plain"
    chosen, probabilities = comparison[chosen_name], (flipped if flip_tta else plain)
    untuned_names = [CLASS_NAMES[index] for index in chosen["untuned"]]
    if untuned_names:
        logger.warning("no validation positive for %s: their thresholds stay at the default %.2f",
                       ", ".join(untuned_names), DEFAULT_THRESHOLD)
    written = chosen["thresholds"].round(4)
    write_json_atomic(artifacts.THRESHOLDS.path(run_dir), {
        "strategy": chosen["chosen_strategy"],
        "thresholds": dict(zip(CLASS_NAMES, written.tolist())),
        "flip_tta": flip_tta,
        "default_threshold": DEFAULT_THRESHOLD,
        "untuned_classes": untuned_names,
        "rule": "flag = probability >= threshold; an image without any flag gets its most probable class",
    })
    table = markdown_table(comparison)
    write_text_atomic(artifacts.THRESHOLD_COMPARISON.path(run_dir), table + "\n")
    print(table)

    flags_tuned = apply_thresholds(probabilities, chosen["thresholds"])
    flags_half = apply_thresholds(probabilities, 0.5)
    f1_tuned = f1_score(labels, flags_tuned, average=None, zero_division=0)
    f1_half = f1_score(labels, flags_half, average=None, zero_division=0)
    average_precision = average_precisions(labels, probabilities)
    plot_per_class_bars({"average precision": average_precision, "F1 at 0.5": f1_half, "F1 at tuned thresholds": f1_tuned},
                        CLASS_NAMES, artifacts.CLASSIFIER_PER_CLASS.path(run_dir),
                        f"classifier on {len(labels)} validation images ({chosen_name.replace('_', ' ')})", "score")
    figures = {name: {key: value for key, value in row.items() if key not in ("thresholds", "untuned")}
               for name, row in comparison.items()}
    figures["chosen"] = chosen_name
    figures["mean_average_precision"] = float(np.nanmean(average_precision))
    figures["per_class"] = {name: {"average_precision": None if np.isnan(ap) else float(ap), "f1_at_0.5": float(half),
                                   "f1_tuned": float(tuned), "threshold": float(threshold)}
                            for name, ap, half, tuned, threshold in zip(CLASS_NAMES, average_precision, f1_half,
                                                                        f1_tuned, chosen["thresholds"])}
    return written, figures


def choose_joint_rule_on_validation(config: Config, validation: artifacts.ClassifierValidation, flip_tta: bool,
                          thresholds: np.ndarray) -> dict:
    """Choose the joint rule on the images both heads were validated on; write joint_rule.json; return the figures."""
    run_dir = config.run_dir
    segmenter_ids, label_maps = artifacts.read_segmenter_validation(run_dir)
    shared = np.intersect1d(validation.ids, segmenter_ids)
    if shared.size == 0:
        raise ArtifactError(f"the classifier's validation images ({artifacts.CLASSIFIER_VALIDATION.path(run_dir)}) and "
                            f"the segmenter's ({artifacts.SEGMENTER_VALIDATION.path(run_dir)}) do not overlap: "
                            "train both on this run's splits (`voc-pipeline run --until tune --force` after data check)")
    probabilities = validation.probabilities_flip_tta if flip_tta else validation.probabilities
    flags = apply_thresholds(probabilities[positions_of(validation.ids, shared)], thresholds)
    maps = [label_maps[position] for position in positions_of(segmenter_ids, shared)]
    train = load_split(config.data.root, "train")
    truth_positions = positions_of(train.ids, shared)
    rule, table = choose_joint_rule(flags, maps, train.labels[truth_positions], [train.masks[p] for p in truth_positions],
                                    config.joint.area_grid)
    write_json_atomic(artifacts.JOINT_RULE.path(run_dir), {"rule": rule.to_dict(), "validation_ids": shared.tolist(),
                                                           "candidates": table})
    chosen = next(row for row in table if row["name"] == rule.name)
    logger.info("joint rule: %s (validation score %.4f; independent heads %.4f)", rule.name, chosen["score"],
                table[0]["score"])
    return {"chosen": rule.name, "validation_images": int(shared.size), "candidates": table}


def run_tune(config: Config) -> dict:
    """Stage `tune`: writes thresholds.json, threshold_comparison.md, classifier_per_class.png and
    joint_rule.json; returns the figures of both choices."""
    validation = artifacts.read_classifier_validation(config.run_dir)
    flip_tta = bool(artifacts.read_json(artifacts.CLASSIFIER_MANIFEST, config.run_dir)["flip_tta"])
    thresholds, threshold_figures = choose_thresholds(config, validation, flip_tta)
    return {"thresholds": threshold_figures, "joint": choose_joint_rule_on_validation(config, validation, flip_tta, thresholds)}
