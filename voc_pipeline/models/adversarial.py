"""Adversarial examples against the trained classifier and segmenter, and a defence.

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
import tensorflow as tf

from voc_pipeline.choices import DEFENCE_BITS, PIXEL_LEVELS
from voc_pipeline.core.classes import CLASS_NAMES, VOID_LABEL
from voc_pipeline.core.probability import sigmoid
from voc_pipeline.core.scoring import classification_row_scores, segmentation_row_scores
from voc_pipeline.core.thresholds import apply_thresholds
from voc_pipeline.errors import ConfigError
from voc_pipeline.models.segmenter import softmax

logger = logging.getLogger(__name__)

def check_epsilon(epsilon: float) -> float:
    """Epsilons are pixel levels: between 0 and 255."""
    low, high = PIXEL_LEVELS
    if not low <= epsilon <= high:
        raise ConfigError(f"epsilon must be between {low} and {high} pixel levels, got {epsilon}")
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
    fewest, most = DEFENCE_BITS
    if not fewest <= bits <= most:
        raise ConfigError(f"bit depth must be between {fewest} and {most}, got {bits}")
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
    region = masks != VOID_LABEL
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
