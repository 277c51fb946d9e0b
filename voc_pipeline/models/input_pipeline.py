"""tf.data pipelines from the in-memory uint8 arrays: load -> resize/augment -> batch -> prefetch.

The arrays stay at native size in memory; `load` only looks one up by position. Every other step is
TensorFlow, runs with `num_parallel_calls=AUTOTUNE`, and draws its randomness from per-example seeds
(`tf.data.Dataset.random`), so augmentation repeats for a given seed. Only training sets are shuffled
and augmented. Masks are only ever resized with nearest neighbour and padded with the ignore value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from voc_pipeline.core.classes import VOID_LABEL

AUTOTUNE = tf.data.AUTOTUNE


def object_box(mask: np.ndarray) -> np.ndarray:
    """[ymin, xmin, ymax, xmax] (fractions) of the union of a mask's objects; the whole image if none."""
    rows = np.flatnonzero(((mask > 0) & (mask != VOID_LABEL)).any(1))
    columns = np.flatnonzero(((mask > 0) & (mask != VOID_LABEL)).any(0))
    if rows.size == 0:
        return np.array([0.0, 0.0, 1.0, 1.0], dtype=np.float32)
    height, width = mask.shape
    return np.array([rows[0] / height, columns[0] / width, (rows[-1] + 1) / height, (columns[-1] + 1) / width], np.float32)


def with_example_seeds(dataset: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """Pair each element with a fresh stateless seed (shape [2]) that changes every epoch."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2, drop_remainder=True)
    return tf.data.Dataset.zip((dataset, seeds))


def paste_sources(positions: np.ndarray, load, seed: int) -> tf.data.Dataset:
    """An endless stream of loaded examples from the same `positions`, in a fresh random order each pass: the
    images whose objects copy-paste takes (only the set being trained on, never validation images)."""
    sources = tf.data.Dataset.from_tensor_slices(np.asarray(positions, dtype=np.int64))
    sources = sources.shuffle(len(positions), seed=seed + 1, reshuffle_each_iteration=True).repeat()
    return sources.map(load, num_parallel_calls=AUTOTUNE)


def assemble(positions: np.ndarray, load, transform, batch_size: int, training: bool, seed: int,
             with_sources: bool = False) -> tf.data.Dataset:
    """positions -> load -> transform -> batch -> prefetch; training shuffles and gives `transform`
    (example, seed pair) with a per-example stateless seed, evaluation gives it the loaded example.
    `with_sources` (training only): the example is a pair (example, another example of `positions`)."""
    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(positions, dtype=np.int64))
    if training:
        dataset = dataset.shuffle(len(positions), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.map(load, num_parallel_calls=AUTOTUNE)
        if with_sources:
            dataset = tf.data.Dataset.zip((dataset, paste_sources(positions, load, seed)))
        dataset = with_example_seeds(dataset, seed)
    else:
        dataset = dataset.map(load, num_parallel_calls=AUTOTUNE)
    return dataset.map(transform, num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)


# ---------------------------------------------------------------- copy-paste (both heads)

# The pasted image's size, drawn between these shares of the largest size at which it fits the target image.
COPY_PASTE_SCALE = (0.25, 1.0)
# A class stays flagged after pasting while this share of the image (or, for a smaller object, half of its
# pixels) is still visible.
COPY_PASTE_MIN_AREA = 0.01


def place_source(source_image, source_mask, height, width, seed):
    """The source image and mask at a random scale, mirrored at random and placed at a random position on a
    height x width canvas: (image, mask), the mask 0 wherever nothing lands."""
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    source_height, source_width = tf.shape(source_image)[0], tf.shape(source_image)[1]
    fits = tf.minimum(tf.cast(height, tf.float32) / tf.cast(source_height, tf.float32),
                      tf.cast(width, tf.float32) / tf.cast(source_width, tf.float32))
    scale = fits * tf.random.stateless_uniform([], seeds[0], *COPY_PASTE_SCALE)
    new_height = tf.clip_by_value(tf.cast(tf.cast(source_height, tf.float32) * scale, tf.int32), 1, height)
    new_width = tf.clip_by_value(tf.cast(tf.cast(source_width, tf.float32) * scale, tf.int32), 1, width)
    image, mask = resize_image_and_mask(source_image, source_mask, new_height, new_width)
    stacked = tf.image.stateless_random_flip_left_right(tf.concat([image, tf.cast(mask, tf.float32)], -1), seeds[1])
    top = tf.random.stateless_uniform([], seeds[2], 0, height - new_height + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seeds[3], 0, width - new_width + 1, dtype=tf.int32)
    placed = tf.image.pad_to_bounding_box(stacked, top, left, height, width)
    return placed[..., :3], tf.cast(tf.round(placed[..., 3:]), tf.int32)


def paste_objects(image, mask, source_image, source_mask, seed, probability: float):
    """With `probability`, the objects of the source (its mask's labelled pixels: classes and void) pasted onto
    the image (float H x W x 3, mask int32 H x W x 1; Ghiasi et al. 2021). Pasted pixels take the source's
    label (its class, or void where the source is void); the rest keeps the image's own, void included.
    Returns (image, mask, placed) where `placed` holds the pasted labels, 0 where nothing was pasted."""
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    height, width = tf.shape(image)[0], tf.shape(image)[1]

    def paste():
        placed_image, placed_mask = place_source(source_image, source_mask, height, width, seeds[1])
        pasted = placed_mask != 0
        return tf.where(pasted, placed_image, image), tf.where(pasted, placed_mask, mask), placed_mask

    def keep():
        return image, mask, tf.zeros_like(mask)

    return tf.cond(tf.random.stateless_uniform([], seeds[0]) < probability, paste, keep)


def visible_labels(label, mask_before, placed, mask_after):
    """The flags of a pasted image: a class is flagged while enough of it is still visible (COPY_PASTE_MIN_AREA
    of the image, or half of its pixels for a smaller object), whether it was there or pasted; a flagged class
    with no pixels in the mask keeps its flag."""
    def class_counts(label_map):
        return tf.cast(tf.math.bincount(tf.reshape(label_map, [-1]), minlength=256, maxlength=256)[1:tf.size(label) + 1],
                       tf.float32)

    before = class_counts(mask_before) + class_counts(placed)
    visible = class_counts(mask_after)
    minimum = tf.maximum(tf.minimum(COPY_PASTE_MIN_AREA * tf.cast(tf.size(mask_after), tf.float32), 0.5 * before), 1.0)
    return tf.where(before > 0, tf.cast(visible >= minimum, tf.float32), label)


def object_box_of(mask):
    """`object_box` in TensorFlow, for a mask made in the pipeline (int32 H x W x 1)."""
    objects = (mask[..., 0] > 0) & (mask[..., 0] != VOID_LABEL)
    rows = tf.cast(tf.where(tf.reduce_any(objects, 1))[:, 0], tf.float32)
    columns = tf.cast(tf.where(tf.reduce_any(objects, 0))[:, 0], tf.float32)
    height, width = tf.cast(tf.shape(mask)[0], tf.float32), tf.cast(tf.shape(mask)[1], tf.float32)
    return tf.cond(tf.size(rows) > 0,
                   lambda: tf.stack([rows[0] / height, columns[0] / width, (rows[-1] + 1) / height, (columns[-1] + 1) / width]),
                   lambda: tf.constant([0.0, 0.0, 1.0, 1.0]))


# ---------------------------------------------------------------- classification


def random_resized_crop(image, box, seed, image_size: int):
    """A random crop (30-100% of the area, aspect 3:4 to 4:3) covering most of the objects, resized."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.reshape(box, [1, 1, 4]), seed=seed,
        min_object_covered=0.75, aspect_ratio_range=(0.75, 1.33), area_range=(0.3, 1.0),
        max_attempts=20, use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, size)
    return tf.image.resize(crop, (image_size, image_size), antialias=True)


def colour_jitter(image, seed):
    """Mild brightness, contrast, saturation and hue changes on a float 0..255 image."""
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    image = image / 255.0
    image = tf.image.stateless_random_brightness(image, 0.1, seeds[0])
    image = tf.image.stateless_random_contrast(image, 0.85, 1.15, seeds[1])
    image = tf.image.stateless_random_saturation(image, 0.85, 1.15, seeds[2])
    image = tf.image.stateless_random_hue(image, 0.03, seeds[3])
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def to_model_input(image):
    """Round a float 0..255 image to the uint8 the models take."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def classification_dataset(images: Sequence[np.ndarray], labels: np.ndarray, positions: np.ndarray,
                           image_size: int, batch_size: int, training: bool, seed: int = 0,
                           boxes: np.ndarray | None = None, masks: Sequence[np.ndarray] | None = None,
                           copy_paste: float = 0.0) -> tf.data.Dataset:
    """Batches of (uint8 image_size x image_size x 3 images, float32 label vectors).

    Args:
        images: all images (native sizes); `positions` picks the ones in this set.
        labels: (N, C) 0/1 labels for all images.
        positions: which images, in order (shuffled each epoch when training).
        training: shuffle, random resized crop that keeps the objects, flip and colour jitter.
        boxes: (N, 4) object union boxes (see `object_box`) used by the crop; whole images if None.
        masks: all masks, which copy-paste needs.
        copy_paste: probability that a training image gets the objects of another image at `positions` pasted on
            it (`paste_objects`); its flags become the classes still visible (`visible_labels`).
    """
    labels = np.asarray(labels, dtype=np.float32)
    boxes = np.tile([[0.0, 0.0, 1.0, 1.0]], (len(images), 1)).astype(np.float32) if boxes is None else boxes
    if training and copy_paste > 0:
        if masks is None:
            raise ValueError("copy-paste needs the training masks: the objects it pastes are their labelled pixels")
        return pasting_classification_dataset(images, labels, masks, positions, image_size, batch_size, seed, copy_paste)

    def load(position):
        image, label, box = tf.numpy_function(
            lambda index: (images[index], labels[index], boxes[index]), [position], [tf.uint8, tf.float32, tf.float32])
        image.set_shape([None, None, 3])
        label.set_shape([labels.shape[1]])
        box.set_shape([4])
        return image, label, box

    def augment(example, seed_pair):
        image, label, box = example
        return classification_augment(image, label, box, seed_pair, image_size)

    def resize_for_evaluation(image, label, box):
        return to_model_input(tf.image.resize(image, (image_size, image_size), antialias=True)), label

    return assemble(positions, load, augment if training else resize_for_evaluation, batch_size, training, seed)


def classification_augment(image, label, box, seed, image_size: int):
    """The classifier's training augmentation: a crop keeping the objects, a flip, colour jitter."""
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    image = random_resized_crop(image, box, seeds[0], image_size)
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    return to_model_input(colour_jitter(image, seeds[2])), label


def pasting_classification_dataset(images, labels, masks, positions, image_size: int, batch_size: int, seed: int,
                                   probability: float) -> tf.data.Dataset:
    """Training batches of the classifier with copy-paste: paste, flag the visible classes, then augment."""

    def load(position):
        image, label, mask = tf.numpy_function(
            lambda index: (images[index], labels[index], masks[index]), [position], [tf.uint8, tf.float32, tf.uint8])
        image.set_shape([None, None, 3])
        label.set_shape([labels.shape[1]])
        mask.set_shape([None, None])
        return tf.cast(image, tf.float32), label, tf.cast(mask[..., None], tf.int32)

    def paste_then_augment(pair, seed_pair):
        (image, label, mask), (source_image, _, source_mask) = pair
        seeds = tf.random.experimental.stateless_split(seed_pair, num=2)
        pasted_image, pasted_mask, placed = paste_objects(image, mask, source_image, source_mask, seeds[0], probability)
        label = visible_labels(label, mask, placed, pasted_mask)
        return classification_augment(pasted_image, label, object_box_of(pasted_mask), seeds[1], image_size)

    return assemble(positions, load, paste_then_augment, batch_size, True, seed, with_sources=True)


def prediction_dataset(images: Sequence[np.ndarray], image_size: int, batch_size: int, flip: bool = False) -> tf.data.Dataset:
    """Batches of uint8 images resized to image_size (mirrored when `flip`), in order, for prediction."""

    def load(position):
        image = tf.numpy_function(lambda index: images[index], [position], tf.uint8)
        image.set_shape([None, None, 3])
        return image

    def resize(image):
        image = tf.image.resize(image, (image_size, image_size), antialias=True)
        return to_model_input(tf.image.flip_left_right(image) if flip else image)

    dataset = tf.data.Dataset.from_tensor_slices(np.arange(len(images), dtype=np.int64))
    dataset = dataset.map(load, num_parallel_calls=AUTOTUNE).map(resize, num_parallel_calls=AUTOTUNE)
    return dataset.batch(batch_size).prefetch(AUTOTUNE)


# ---------------------------------------------------------------- segmentation


def letterbox_size(height, width, image_size: int):
    """(new_height, new_width) that fit the long side to image_size, keeping the aspect ratio."""
    scale = tf.cast(image_size, tf.float32) / tf.cast(tf.maximum(height, width), tf.float32)
    new_height = tf.maximum(1, tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32))
    new_width = tf.maximum(1, tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32))
    return new_height, new_width


def pad_bottom_right(tensor, target_height, target_width, fill):
    """Pad a H x W x C tensor at the bottom and right to at least the target size with `fill`."""
    height, width = tf.shape(tensor)[0], tf.shape(tensor)[1]
    padding = [[0, tf.maximum(target_height - height, 0)], [0, tf.maximum(target_width - width, 0)], [0, 0]]
    return tf.pad(tensor - fill, padding) + fill


def pad_image_and_mask(image, mask, target_height, target_width):
    """Pad to at least the target size: the image with its mean colour, the mask with the ignore label."""
    mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
    return (pad_bottom_right(image, target_height, target_width, mean),
            pad_bottom_right(mask, target_height, target_width, VOID_LABEL))


def resize_image_and_mask(image, mask, height, width):
    """Resize the image bilinearly and the mask with nearest neighbour to the same size."""
    image = tf.image.resize(image, (height, width), antialias=True)
    mask = tf.image.resize(mask, (height, width), method="nearest")
    return image, mask


def letterbox(image, mask, image_size: int):
    """Fit the long side to image_size, then pad to a square (image with its mean, mask with ignore)."""
    new_height, new_width = letterbox_size(tf.shape(image)[0], tf.shape(image)[1], image_size)
    image, mask = resize_image_and_mask(image, mask, new_height, new_width)
    return pad_image_and_mask(image, mask, image_size, image_size)


@tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32)])
def letterbox_for_prediction(image, image_size):
    """(uint8 image_size square image, valid height, valid width) for one image of any size."""
    image = tf.cast(image, tf.float32)
    height, width = letterbox_size(tf.shape(image)[0], tf.shape(image)[1], image_size)
    image = tf.image.resize(image, (height, width), antialias=True)
    image = pad_bottom_right(image, image_size, image_size, tf.reduce_mean(image, axis=[0, 1], keepdims=True))
    return to_model_input(image), height, width


def random_scale_crop_flip(image, mask, seed, image_size: int, scale_range: tuple[float, float]):
    """Joint augmentation: random scale around the letterbox size, pad, random crop, horizontal flip."""
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    scale = tf.random.stateless_uniform([], seeds[0], scale_range[0], scale_range[1])
    base_height, base_width = letterbox_size(tf.shape(image)[0], tf.shape(image)[1], image_size)
    height = tf.maximum(1, tf.cast(tf.cast(base_height, tf.float32) * scale, tf.int32))
    width = tf.maximum(1, tf.cast(tf.cast(base_width, tf.float32) * scale, tf.int32))
    image, mask = resize_image_and_mask(image, mask, height, width)
    image, mask = pad_image_and_mask(image, mask, image_size, image_size)
    # Crop image and mask together: stack them so one random offset serves both.
    stacked = tf.concat([image, tf.cast(mask, tf.float32)], axis=-1)
    stacked = tf.image.stateless_random_crop(stacked, [image_size, image_size, 4], seeds[1])
    stacked = tf.image.stateless_random_flip_left_right(stacked, seeds[2])
    return stacked[..., :3], tf.cast(stacked[..., 3:], tf.int32), seeds[3]


def segmentation_dataset(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], positions: np.ndarray,
                         image_size: int, batch_size: int, training: bool, seed: int = 0,
                         scale_range: tuple[float, float] = (0.5, 1.5), copy_paste: float = 0.0) -> tf.data.Dataset:
    """Batches of (uint8 image_size x image_size x 3 images, int32 image_size x image_size masks).

    Evaluation letterboxes (long side to image_size, padded; the same geometry as prediction); training
    adds a random scale, a random crop and a flip applied identically to image and mask, and colour jitter
    to the image. Padding is labelled VOID_LABEL, which the loss and the metrics skip. With `copy_paste` (a
    probability), a training image first gets the objects of another image at `positions` pasted on it.
    """

    def load(position):
        image, mask = tf.numpy_function(lambda index: (images[index], masks[index]), [position], [tf.uint8, tf.uint8])
        image.set_shape([None, None, 3])
        mask.set_shape([None, None])
        return tf.cast(image, tf.float32), tf.cast(mask[..., None], tf.int32)

    # Every example comes out image_size square; saying so gives the batches the static shape a model of one input
    # size (a keras-hub encoder) needs.
    def square(image, mask):
        return tf.ensure_shape(image, (image_size, image_size, 3)), tf.ensure_shape(mask, (image_size, image_size))

    def augment(example, seed_pair):
        image, mask = example
        image, mask, jitter_seed = random_scale_crop_flip(image, mask, seed_pair, image_size, scale_range)
        return square(to_model_input(colour_jitter(image, jitter_seed)), mask[..., 0])

    def paste_then_augment(pair, seed_pair):
        (image, mask), (source_image, source_mask) = pair
        seeds = tf.random.experimental.stateless_split(seed_pair, num=2)
        image, mask, _ = paste_objects(image, mask, source_image, source_mask, seeds[0], copy_paste)
        return augment((image, mask), seeds[1])

    def letterbox_for_evaluation(image, mask):
        image, mask = letterbox(image, mask, image_size)
        return square(to_model_input(image), mask[..., 0])

    if not training:
        return assemble(positions, load, letterbox_for_evaluation, batch_size, False, seed)
    if copy_paste > 0:
        return assemble(positions, load, paste_then_augment, batch_size, True, seed, with_sources=True)
    return assemble(positions, load, augment, batch_size, True, seed)
