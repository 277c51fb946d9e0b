"""Stage `attack`: adversarial examples against the run's own classifier and segmenter, and a defence.

Perturbations live in raw pixel space (0..255, before the model's own preprocessing layer), are bounded
in L-infinity by epsilon pixel levels and clipped to valid pixels; gradients come from the trained models
in inference mode. Attacks: FGSM (one signed-gradient step of size epsilon) and PGD (iterated steps
projected back into the epsilon ball). The defence is bit-depth reduction ("feature squeezing"): each
pixel is rounded to one of 2**bits levels before prediction, which moves it by at most half a level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from voc_pipeline.classes import CLASS_NAMES, class_index
from voc_pipeline.classifier import sigmoid
from voc_pipeline.classifier_training import load_classifiers
from voc_pipeline.config import Config
from voc_pipeline.data import load_train_and_splits
from voc_pipeline.files import write_text_atomic
from voc_pipeline.input_pipeline import IGNORE_LABEL, classification_dataset, segmentation_dataset
from voc_pipeline.plots import overlay, plt, save_figure
from voc_pipeline.prediction import load_thresholds
from voc_pipeline.run_folder import prepare_run_folder, update_metrics
from voc_pipeline.scoring import classification_row_scores, segmentation_row_scores
from voc_pipeline.segmenter import softmax
from voc_pipeline.segmenter_training import load_segmenter
from voc_pipeline.splits import positions_of
from voc_pipeline.thresholds import apply_thresholds

logger = logging.getLogger(__name__)

ATTACK_DIR = "attack"


def check_epsilon(epsilon: float) -> float:
    """Epsilons are pixel levels: between 0 and 255."""
    if not 0 <= epsilon <= 255:
        raise ValueError(f"epsilon must be between 0 and 255 pixel levels, got {epsilon}")
    return float(epsilon)


def differentiable(model: keras.Model):
    """The model as a function of float raw pixels (0..255), differentiable down to the pixels.

    Saved models take uint8, and a cast to uint8 has no gradient; the preprocessing layer right after the
    input accepts floats, so the attack feeds floats to it and runs the rest of the model from there.
    """
    preprocess = model.get_layer("preprocess")
    rest = keras.Model(preprocess.output, model.output)
    return lambda pixels: rest(preprocess(pixels), training=False)


def project(adversarial: tf.Tensor, original: tf.Tensor, epsilon: float) -> tf.Tensor:
    """Clip into the L-infinity ball of radius epsilon around the original, and into valid pixels 0..255."""
    return tf.clip_by_value(tf.clip_by_value(adversarial, original - epsilon, original + epsilon), 0.0, 255.0)


def gradient_attack(forward, loss_function, images: np.ndarray, epsilon: float, steps: int = 1,
                    targeted: bool = False, step_size: float | None = None) -> np.ndarray:
    """FGSM (steps=1, step size epsilon) or PGD (steps > 1) on a batch of raw pixels.

    PGD keeps, per image, the best iterate seen (highest loss untargeted, lowest targeted) rather than
    the last one: with sign steps of 2.5 * epsilon / steps the iterates can overshoot and oscillate,
    and on saturating activations a large budget would otherwise look weaker than a small one.

    Args:
        forward: float pixels -> model outputs (see `differentiable`).
        loss_function: outputs -> per-example loss; untargeted attacks ascend it, targeted ones descend it.
        images: (B, H, W, 3) pixels 0..255 (any numeric dtype).
        epsilon: L-infinity bound in pixel levels.

    Returns:
        The adversarial images as float32 pixels, rounded to whole levels, within epsilon of the originals.
    """
    epsilon = check_epsilon(epsilon)
    original = tf.constant(np.asarray(images, dtype=np.float32))
    if epsilon == 0:
        return original.numpy()
    step_size = epsilon if steps == 1 else (step_size or 2.5 * epsilon / steps)
    direction = -1.0 if targeted else 1.0

    def whole_levels(pixels):
        # Whole pixel levels, as a saved image would have; rounding cannot leave the ball (its bounds are whole).
        return project(tf.round(pixels), original, np.floor(epsilon))

    def signed_loss(pixels):
        return direction * loss_function(forward(pixels))

    adversarial = original
    best, best_loss = None, None
    for step in range(steps + 1):
        candidate = whole_levels(adversarial)
        with tf.GradientTape() as tape:
            tape.watch(adversarial)
            total_loss = tf.reduce_sum(signed_loss(adversarial))
        if step > 0:  # the original itself is never the answer of a non-zero budget
            candidate_loss = signed_loss(candidate)
            improved = candidate_loss > best_loss if best is not None else tf.ones_like(candidate_loss, tf.bool)
            best = candidate if best is None else tf.where(improved[:, None, None, None], candidate, best)
            best_loss = candidate_loss if best_loss is None else tf.where(improved, candidate_loss, best_loss)
        if step == steps:
            break
        gradient = tape.gradient(total_loss, adversarial)
        adversarial = project(adversarial + step_size * tf.sign(gradient), original, epsilon)
    return best.numpy()


def reduce_bit_depth(images: np.ndarray, bits: int) -> np.ndarray:
    """Round every pixel to the nearest of 2**bits evenly spaced levels in 0..255."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bit depth must be between 1 and 8, got {bits}")
    step = 255.0 / (2 ** bits - 1)
    return np.clip(np.round(np.asarray(images, dtype=np.float32) / step) * step, 0, 255).round().astype(np.uint8)


def bit_depth_bound(bits: int) -> float:
    """The largest change bit-depth reduction makes to a pixel: half a level (rounded up to whole levels)."""
    return float(np.ceil(255.0 / (2 ** bits - 1) / 2))


# ---------------------------------------------------------------- classifier


def binary_cross_entropy_per_image(targets: np.ndarray):
    """outputs -> per-image mean binary cross-entropy of the logits against fixed 0/1 targets."""
    targets = tf.constant(targets, dtype=tf.float32)
    return lambda logits: tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits), axis=-1)


def single_class_loss(class_indices: np.ndarray, present: bool):
    """outputs -> per-image cross-entropy of one class's logit towards present (1) or absent (0)."""
    columns = tf.constant(class_indices, dtype=tf.int32)
    def loss(logits):
        chosen = tf.gather(logits, columns, axis=1, batch_dims=1)
        return tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.fill(tf.shape(chosen), 1.0 if present else 0.0), logits=chosen)
    return loss


def classifier_probabilities(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return sigmoid(model.predict_on_batch(np.asarray(images).astype(np.uint8)))


@dataclass
class ClassifierAttackResult:
    rows: list[dict]
    examples: dict


def attack_classifier(model, images: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, epsilons, steps: int,
                      target_class: int, defence_bits: int) -> ClassifierAttackResult:
    """Untargeted (flip the predicted flags) and targeted (make `target_class` appear; make each image's
    most probable class disappear) FGSM and PGD at each epsilon, with and without the defence."""
    forward = differentiable(model)
    clean_probabilities = classifier_probabilities(model, images)
    clean_flags = apply_thresholds(clean_probabilities, thresholds)
    top_class = clean_probabilities.argmax(1)
    appear = np.full(len(images), target_class)
    attacks = {
        "untargeted (flip flags)": (binary_cross_entropy_per_image(clean_flags), False,
                                    lambda flags, probabilities: (flags != clean_flags).any(1)),
        f"targeted: {CLASS_NAMES[target_class]} appears": (single_class_loss(appear, True), True,
                                                           lambda flags, probabilities: flags[:, target_class] == 1),
        "targeted: top class disappears": (single_class_loss(top_class, False), True,
                                           lambda flags, probabilities: flags[np.arange(len(flags)), top_class] == 0),
    }
    clean_score = classification_row_scores(clean_flags, labels).mean()
    defended_clean = apply_thresholds(classifier_probabilities(model, reduce_bit_depth(images, defence_bits)), thresholds)
    rows, examples = [], {}
    for attack_name, (loss, targeted, succeeded) in attacks.items():
        for method, method_steps in (("FGSM", 1), ("PGD", steps)):
            for epsilon in epsilons:
                adversarial = gradient_attack(forward, loss, images, epsilon, method_steps, targeted)
                for defended in (False, True):
                    seen = reduce_bit_depth(adversarial, defence_bits) if defended else adversarial
                    probabilities = classifier_probabilities(model, seen)
                    flags = apply_thresholds(probabilities, thresholds)
                    rows.append({"model": "classifier", "attack": attack_name, "method": method, "epsilon": epsilon,
                                 "defence": f"bit depth {defence_bits}" if defended else "none",
                                 "success_rate": float(succeeded(flags, probabilities).mean()),
                                 "clean_score": float(classification_row_scores(defended_clean if defended else clean_flags, labels).mean()),
                                 "adversarial_score": float(classification_row_scores(flags, labels).mean())})
                if method == "PGD" and attack_name.startswith("untargeted"):
                    examples[epsilon] = adversarial
    logger.info("classifier: clean classification score %.4f on %d images", clean_score, len(images))
    return ClassifierAttackResult(rows, examples)


# ---------------------------------------------------------------- segmenter


def pixel_target_loss(target_maps: np.ndarray, region: np.ndarray):
    """outputs -> per-image mean cross-entropy towards `target_maps` over `region` pixels."""
    targets = tf.constant(target_maps, dtype=tf.int32)
    weights = tf.constant(region, dtype=tf.float32)
    def loss(logits):
        pixel_losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits) * weights
        return tf.reduce_sum(pixel_losses, axis=[1, 2]) / tf.maximum(tf.reduce_sum(weights, axis=[1, 2]), 1.0)
    return loss


def segment(model, images: np.ndarray) -> np.ndarray:
    return softmax(np.asarray(model.predict_on_batch(np.asarray(images).astype(np.uint8)), np.float32)).argmax(-1)


def attack_segmenter(model, images: np.ndarray, masks: np.ndarray, epsilons, steps: int, target_class: int,
                     defence_bits: int) -> tuple[list[dict], dict]:
    """Targeted attack painting every valid pixel as `target_class`; pixel success rate and segmentation
    Dice (void and padding counted as background) at each epsilon, with and without the defence."""
    forward = differentiable(model)
    region = masks != IGNORE_LABEL
    target_maps = np.where(region, target_class + 1, 0)
    truth = np.where(region, masks, 0)
    loss = pixel_target_loss(target_maps, region)

    def dice(predicted):
        return float(segmentation_row_scores(list(np.where(region, predicted, 0)), list(truth)).mean())

    clean = {False: segment(model, images), True: segment(model, reduce_bit_depth(images, defence_bits))}
    rows, examples = [], {}
    for method, method_steps in (("FGSM", 1), ("PGD", steps)):
        for epsilon in epsilons:
            adversarial = gradient_attack(forward, loss, images, epsilon, method_steps, targeted=True)
            for defended in (False, True):
                predicted = segment(model, reduce_bit_depth(adversarial, defence_bits) if defended else adversarial)
                rows.append({"model": "segmenter", "attack": f"targeted: paint everything {CLASS_NAMES[target_class]}",
                             "method": method, "epsilon": epsilon,
                             "defence": f"bit depth {defence_bits}" if defended else "none",
                             "success_rate": float((predicted == target_class + 1)[region].mean()),
                             "clean_score": dice(clean[defended]), "adversarial_score": dice(predicted)})
            if method == "PGD":
                examples[epsilon] = (adversarial, segment(model, adversarial))
    return rows, {"clean": clean[False], "adversarial": examples}


# ---------------------------------------------------------------- report


def plot_examples(originals, adversarials, titles_clean, titles_adversarial, epsilon, path, overlays=None) -> None:
    """Rows of: original, perturbation amplified to the full range, adversarial image; predictions in titles."""
    count = len(originals)
    figure, axes = plt.subplots(count, 3, figsize=(9, 3.1 * count), squeeze=False)
    for row in range(count):
        perturbation = adversarials[row].astype(np.float32) - originals[row].astype(np.float32)
        amplified = np.clip(127.5 + perturbation * (127.5 / max(epsilon, 1e-6)), 0, 255).astype(np.uint8)
        panels = [(originals[row], f"original: {titles_clean[row]}"),
                  (amplified, f"perturbation x{127.5 / max(epsilon, 1e-6):.0f} (eps {epsilon:g})"),
                  (adversarials[row], f"adversarial: {titles_adversarial[row]}")]
        if overlays is not None:
            panels[0] = (overlays[0][row], panels[0][1])
            panels[2] = (overlays[1][row], panels[2][1])
        for axis, (picture, title) in zip(axes[row], panels):
            axis.imshow(np.asarray(picture, dtype=np.uint8))
            axis.set_title(title, fontsize=7)
            axis.axis("off")
    figure.tight_layout()
    save_figure(figure, path)


def flag_names(flags: np.ndarray) -> list[str]:
    return [", ".join(CLASS_NAMES[index] for index in np.flatnonzero(row)) or "-" for row in flags]


def markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(f"{value:.3f}" if isinstance(value, float) else str(value) for value in row) + " |")
    return "\n".join(lines)


def run_attack(config: Config) -> dict:
    """Stage `attack`: writes attack/attack.csv, attack/attack.md and PNG panels; returns a summary."""
    settings = config.attack
    epsilons = [check_epsilon(epsilon) for epsilon in settings.epsilons]
    target_class = class_index(settings.target_class)
    run_dir = prepare_run_folder(config, "attack")
    output = run_dir / ATTACK_DIR
    output.mkdir(exist_ok=True)
    classifiers, _ = load_classifiers(config)
    thresholds, _ = load_thresholds(config)
    segmenter, _ = load_segmenter(config)
    train, splits = load_train_and_splits(config)
    positions = positions_of(train.ids, splits.validation_ids)[: settings.num_images]

    classifier = classifiers[0]
    size = classifier.input_shape[1]
    images, labels = next(iter(classification_dataset(train.images, train.labels, positions, size, len(positions), training=False)))
    images, labels = images.numpy(), labels.numpy().astype(np.int8)
    classifier_result = attack_classifier(classifier, images, labels, thresholds, epsilons, settings.pgd_steps,
                                          target_class, settings.defence_bits)
    segmentation_images, segmentation_masks = next(iter(segmentation_dataset(
        train.images, train.masks, positions, segmenter.input_shape[1], len(positions), training=False)))
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
    write_text_atomic(output / "attack.md", "\n\n".join([
        f"# Adversarial attacks on run `{config.run_name}`",
        f"{len(positions)} validation images; L-infinity budgets in pixel levels (0..255); PGD with "
        f"{settings.pgd_steps} steps; defence: bit-depth reduction to {settings.defence_bits} bits (moves a pixel by at "
        f"most {bit_depth_bound(settings.defence_bits):g} levels). Success: the predicted flags change (untargeted), the "
        "target class appears or the top class disappears (targeted), or the share of pixels painted as the target "
        "(segmenter). Scores: classification rows' mean F1, segmentation rows' mean Dice.",
        "## Findings", "\n".join(f"- {finding}" for finding in findings(frame)),
        markdown_table(frame), "![success versus epsilon](success_vs_epsilon.png)",
        "![classifier examples](classifier_examples.png)", "![segmenter examples](segmenter_examples.png)",
    ]) + "\n")
    summary = {"images": len(positions), "epsilons": epsilons, "rows": len(frame)}
    update_metrics(config, "attack", summary)
    print(markdown_table(frame[frame["method"] == "PGD"]))
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


def plot_success_curves(frame: pd.DataFrame, path) -> None:
    """Success rate versus epsilon for every attack, PGD, with the defence dashed."""
    figure, axis = plt.subplots(figsize=(8, 4))
    for (model, attack, defence), group in frame[frame["method"] == "PGD"].groupby(["model", "attack", "defence"]):
        axis.plot(group["epsilon"], group["success_rate"], marker="o", linestyle="--" if defence != "none" else "-",
                  label=f"{model}: {attack}{' + ' + defence if defence != 'none' else ''}")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("epsilon (pixel levels)")
    axis.set_ylabel("success rate")
    axis.set_ylim(-0.02, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6)
    save_figure(figure, path)
