"""Stage `attack`: adversarial examples against the run's own classifier and segmenter, and a defence.

Perturbations live in raw pixel space (0..255, before the model's own preprocessing layer), are bounded
in L-infinity by epsilon pixel levels and clipped to valid pixels (see voc_pipeline.models.adversarial).
The stage attacks validation images and reports, in words, a table and pictures, what it finds.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from voc_pipeline import artifacts, markdown
from voc_pipeline.config import Config
from voc_pipeline.core.classes import CLASS_NAMES, class_index
from voc_pipeline.core.thresholds import apply_thresholds
from voc_pipeline.data.competition import load_split
from voc_pipeline.data.splits import positions_of
from voc_pipeline.files import write_text_atomic
from voc_pipeline.models.adversarial import (
    attack_classifier,
    attack_segmenter,
    bit_depth_bound,
    check_epsilon,
    classifier_probabilities,
)
from voc_pipeline.models.input_pipeline import classification_dataset, segmentation_dataset
from voc_pipeline.plots import overlay, plot_examples, plot_success_curves

logger = logging.getLogger(__name__)

# The folder of this stage's files (artifacts.ATTACK_FILES).
ATTACK_DIR = artifacts.ATTACK_FILES.pattern.partition("/")[0]


def flag_names(flags: np.ndarray) -> list[str]:
    return [", ".join(CLASS_NAMES[index] for index in np.flatnonzero(row)) or "-" for row in flags]


def attack_table(frame: pd.DataFrame) -> str:
    return markdown.table(list(frame.columns), frame.itertuples(index=False), float_format="{:.3f}")


def run_attack(config: Config) -> dict:
    """Stage `attack`: writes attack/attack.csv, attack/attack.md and PNG panels; returns a summary."""
    settings = config.attack
    epsilons = [check_epsilon(epsilon) for epsilon in settings.epsilons]
    target_class = class_index(settings.target_class)
    run_dir = config.run_dir
    output = run_dir / ATTACK_DIR
    output.mkdir(exist_ok=True)
    classifiers, _ = artifacts.load_classifiers(run_dir)
    # The classifier is attacked alone, so its own thresholds apply, not those of fused evidence.
    thresholds = artifacts.read_thresholds(run_dir, "classifier_thresholds")
    segmenter, segmenter_manifest = artifacts.load_segmenter(run_dir)
    train = load_split(config.data.root, "train")
    splits = artifacts.read_splits(run_dir)
    positions = positions_of(train.ids, splits.validation_ids)[: settings.num_images]

    classifier = classifiers[0]
    size = classifier.input_shape[1]
    images, labels = next(iter(classification_dataset(train.images, train.labels, positions, size, len(positions), training=False)))
    images, labels = images.numpy(), labels.numpy().astype(np.int8)
    classifier_result = attack_classifier(classifier, images, labels, thresholds, epsilons, settings.pgd_steps,
                                          target_class, settings.defence_bits)
    segmentation_images, segmentation_masks = next(iter(segmentation_dataset(
        train.images, train.masks, positions, int(segmenter_manifest["image_size"]), len(positions), training=False)))
    segmenter_rows, segmenter_examples = attack_segmenter(segmenter, segmentation_images.numpy(), segmentation_masks.numpy(),
                                                          epsilons, settings.pgd_steps, target_class, settings.defence_bits)

    frame = pd.DataFrame(classifier_result.rows + segmenter_rows)
    write_text_atomic(output / "attack.csv", frame.to_csv(index=False))
    shown_epsilon = max(epsilons)
    shown = slice(0, min(settings.examples, len(positions)))
    clean_flags = apply_thresholds(classifier_probabilities(classifier, images), thresholds)
    adversarial = classifier_result.examples[shown_epsilon]
    adversarial_flags = apply_thresholds(classifier_probabilities(classifier, adversarial), thresholds)
    plot_examples(images[shown], adversarial[shown], flag_names(clean_flags[shown]), flag_names(adversarial_flags[shown]),
                  shown_epsilon, output / "classifier_examples.png")
    segmentation_adversarial, segmentation_predicted = segmenter_examples["adversarial"][shown_epsilon]
    base = segmentation_images.numpy()
    plot_examples(base[shown], segmentation_adversarial[shown],
                  ["segmentation"] * len(base[shown]), [f"painted as {CLASS_NAMES[target_class]}?"] * len(base[shown]),
                  shown_epsilon, output / "segmenter_examples.png",
                  overlays=([overlay(image, label_map.astype(np.uint8)) for image, label_map in zip(base[shown], segmenter_examples["clean"][shown])],
                            [overlay(np.asarray(image, np.uint8), label_map.astype(np.uint8)) for image, label_map in zip(segmentation_adversarial[shown], segmentation_predicted[shown])]))
    plot_success_curves(frame, output / "success_vs_epsilon.png")
    observations = findings(frame)
    write_text_atomic(output / "attack.md", "\n\n".join([
        f"# Adversarial attacks on run `{config.run_name}`",
        f"{len(positions)} validation images; L-infinity budgets in pixel levels (0..255); PGD with "
        f"{settings.pgd_steps} steps; defence: bit-depth reduction to {settings.defence_bits} bits (moves a pixel by at "
        f"most {bit_depth_bound(settings.defence_bits):g} levels). Success: the predicted flags change (untargeted), the "
        "target class appears or the top class disappears (targeted), or the share of pixels painted as the target "
        "(segmenter). Scores: classification rows' mean F1, segmentation rows' mean Dice.",
        "## Findings", "\n".join(f"- {finding}" for finding in observations),
        attack_table(frame), "![success versus epsilon](success_vs_epsilon.png)",
        "![classifier examples](classifier_examples.png)", "![segmenter examples](segmenter_examples.png)",
    ]) + "\n")
    # The findings travel in the stage's metrics too: the notebook renders them without importing this stage.
    summary = {"images": len(positions), "epsilons": epsilons, "rows": len(frame), "findings": observations}
    print(attack_table(frame[frame["method"] == "PGD"]))
    return summary


def findings(frame: pd.DataFrame) -> list[str]:
    """Plain-language observations from the PGD table: the smallest budget that succeeds on most images,
    what the defence changes, and success that falls as the budget grows (a sign of gradient masking:
    an adversary with the larger budget could reuse the smaller budget's perturbation)."""
    observations = []
    pgd = frame[frame["method"] == "PGD"]
    for (model, attack), group in pgd.groupby(["model", "attack"], sort=False):
        plain = group[group["defence"] == "none"].sort_values("epsilon")
        defended = group[group["defence"] != "none"].sort_values("epsilon")
        strong = plain[plain["success_rate"] >= 0.5]
        budget = f"epsilon {strong['epsilon'].iloc[0]:g} succeeds on {strong['success_rate'].iloc[0]:.0%}" if len(strong) \
            else f"no budget up to {plain['epsilon'].max():g} succeeds on half the images (best {plain['success_rate'].max():.0%})"
        smallest = plain["epsilon"].iloc[0]
        defence = (f"with the defence, epsilon {smallest:g} succeeds on {defended['success_rate'].iloc[0]:.0%} "
                   f"instead of {plain['success_rate'].iloc[0]:.0%}")
        observations.append(f"{model}, {attack}: {budget}; {defence}.")
        rates = plain["success_rate"].to_numpy()
        if (np.diff(rates) < -0.1).any():
            observations.append(f"{model}, {attack}: success falls as the budget grows ({', '.join(f'{r:.0%}' for r in rates)}): "
                                "the loss surface is not followed well by sign-gradient steps at large budgets (gradient "
                                "masking); the true vulnerability at a budget is at least that of any smaller budget.")
    clean = frame.groupby(["model", "defence"])["clean_score"].first()
    for model in frame["model"].unique():
        costs = clean[model]
        defended_name = next(name for name in costs.index if name != "none")
        observations.append(f"{model}: clean score {costs['none']:.3f} without the defence, {costs[defended_name]:.3f} with it.")
    return observations


