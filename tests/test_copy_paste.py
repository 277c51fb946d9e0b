"""Copy-paste augmentation on constructed images: what is pasted, what the mask and the flags become, where the
pasted objects come from, and that a seed repeats it."""

from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from voc_pipeline.config import build_config
from voc_pipeline.core.classes import VOID_LABEL
from voc_pipeline.errors import ConfigError
from voc_pipeline.models.heads import CLASSIFIER, SEGMENTER, draw_training_examples
from voc_pipeline.models.input_pipeline import (
    COPY_PASTE_MIN_AREA,
    classification_dataset,
    object_box,
    object_box_of,
    paste_objects,
    segmentation_dataset,
    visible_labels,
)

TARGET_COLOUR, SOURCE_COLOUR = 40.0, 200.0


def target_and_source():
    """A 60 x 80 target (class 1 box, a void band, background) and a 50 x 50 source (class 7 box, a void rim)."""
    target_mask = np.zeros((60, 80), np.int32)
    target_mask[5:25, 5:30] = 1
    target_mask[40:44, :] = VOID_LABEL
    source_mask = np.zeros((50, 50), np.int32)
    source_mask[10:40, 10:40] = VOID_LABEL
    source_mask[12:38, 12:38] = 7
    return (np.full((60, 80, 3), TARGET_COLOUR, np.float32), target_mask[..., None],
            np.full((50, 50, 3), SOURCE_COLOUR, np.float32), source_mask[..., None])


def paste(seed, probability=1.0):
    image, mask, source_image, source_mask = target_and_source()
    pasted_image, pasted_mask, placed = paste_objects(tf.constant(image), tf.constant(mask), tf.constant(source_image),
                                                      tf.constant(source_mask), tf.constant(seed, tf.int64), probability)
    return mask[..., 0], pasted_image.numpy(), pasted_mask.numpy()[..., 0], placed.numpy()[..., 0]


@pytest.mark.parametrize("seed", [[0, 1], [3, 4], [7, 7], [11, 2]])
def test_pasted_pixels_carry_the_pasted_label_and_the_rest_is_untouched(seed):
    before, image, mask, placed = paste(seed)
    pasted = placed != 0
    assert (placed == 7).any(), "probability 1 pastes the source's object"
    assert set(np.unique(placed)) <= {0, 7, VOID_LABEL}
    # Pasted pixels take the source's label and colour, the source's void rim staying void.
    assert (mask[pasted] == placed[pasted]).all()
    assert np.allclose(image[pasted], SOURCE_COLOUR)
    # Elsewhere nothing changes: the target's void stays void, its object and background keep their labels.
    assert (mask[~pasted] == before[~pasted]).all() and np.allclose(image[~pasted], TARGET_COLOUR)
    assert (mask[(before == VOID_LABEL) & ~pasted] == VOID_LABEL).all()


def test_probability_zero_pastes_nothing():
    before, image, mask, placed = paste([0, 1], probability=0.0)
    assert not placed.any() and (mask == before).all() and np.allclose(image, TARGET_COLOUR)


def flags(label, before, placed, after):
    return visible_labels(tf.constant(label, tf.float32), tf.constant(before[..., None]), tf.constant(placed[..., None]),
                          tf.constant(after[..., None])).numpy()


def test_flags_are_the_classes_still_visible():
    before = np.zeros((100, 100), np.int32)
    before[0:50, 0:50] = 1       # 2500 pixels, half left visible below
    before[60:70, 60:70] = 2     # 100 pixels, all covered below
    before[90:92, 0:2] = 3       # a 4-pixel object, untouched: under the minimum area, yet flagged
    placed = np.zeros_like(before)
    placed[25:75, 25:75] = 5     # pasted over half of class 1 and all of class 2
    placed[99, 99] = 6           # a 1-pixel sliver of a pasted class 6, then covered by nothing
    after = np.where(placed != 0, placed, before)
    label = np.zeros(20)
    label[[0, 1, 2, 19]] = 1     # class 20 is flagged without any pixel in the mask: it keeps its flag
    result = flags(label, before, placed, after)
    assert np.flatnonzero(result).tolist() == [0, 2, 4, 5, 19]

    # Class 1 loses its flag once less than the minimum area remains of it.
    minimum_pixels = int(COPY_PASTE_MIN_AREA * before.size)
    for uncovered, flagged in ((minimum_pixels - 1, 0), (minimum_pixels, 1)):
        placed = np.zeros_like(before)
        placed[0:50, 0:50] = 5
        rows, columns = np.divmod(np.arange(uncovered), 50)  # the first pixels of class 1's box, row by row
        placed[rows, columns] = 0
        after = np.where(placed != 0, placed, before)
        assert (after == 1).sum() == uncovered and flags(label, before, placed, after)[0] == flagged


def test_object_box_in_the_pipeline_matches_the_numpy_one():
    mask = np.zeros((30, 40), np.uint8)
    assert object_box_of(tf.constant(mask[..., None], tf.int32)).numpy().tolist() == object_box(mask).tolist()
    mask[3:9, 10:31] = 4
    mask[20, 2] = VOID_LABEL
    assert np.allclose(object_box_of(tf.constant(mask[..., None], tf.int32)).numpy(), object_box(mask))


def constructed_set(count=8, size=(48, 64)):
    """Images of one colour each with one object; the last two (the "validation" images) are class 20."""
    rng = np.random.default_rng(0)
    images, masks, labels = [], [], np.zeros((count, 20), np.float32)
    for index in range(count):
        class_index = 20 if index >= count - 2 else index % 6 + 1
        image = np.full((*size, 3), 10 * index, np.uint8)
        mask = np.zeros(size, np.uint8)
        top, left = rng.integers(0, 20), rng.integers(0, 30)
        mask[top:top + 20, left:left + 24] = class_index
        mask[top + 20, left:left + 24] = VOID_LABEL
        image[mask == class_index] = 250 - 10 * index
        images.append(image), masks.append(mask)
        labels[index, class_index - 1] = 1
    return images, masks, labels


def test_validation_images_are_never_a_source_of_pasted_objects():
    images, masks, labels = constructed_set()
    fit_positions = np.arange(6)
    segments = segmentation_dataset(images, masks, fit_positions, 32, 6, training=True, seed=5, copy_paste=1.0)
    flags_seen = classification_dataset(images, labels, fit_positions, 32, 6, training=True, seed=5, masks=masks,
                                        copy_paste=1.0)
    for _ in range(4):  # epochs
        for _, batch_masks in segments:
            assert not (batch_masks.numpy() == 20).any()
        for _, batch_labels in flags_seen:
            assert not batch_labels.numpy()[:, 19].any()
    # ...while each fit image does receive objects of others.
    classes_per_mask = [len(set(np.unique(mask)) - {0, VOID_LABEL}) for _, batch in segments for mask in batch.numpy()]
    assert max(classes_per_mask) == 2


def batches(dataset):
    return [[part.numpy() for part in batch] for batch in dataset]


@pytest.mark.parametrize("head", ["segmenter", "classifier"])
def test_the_same_seed_gives_the_same_batches_and_another_seed_others(head):
    images, masks, labels = constructed_set()

    def dataset(seed):
        if head == "segmenter":
            return segmentation_dataset(images, masks, np.arange(6), 32, 3, training=True, seed=seed, copy_paste=0.8)
        return classification_dataset(images, labels, np.arange(6), 32, 3, training=True, seed=seed, masks=masks,
                                      copy_paste=0.8)

    first, again, other = batches(dataset(1)), batches(dataset(1)), batches(dataset(2))
    assert all(np.array_equal(a, b) for batch_a, batch_b in zip(first, again) for a, b in zip(batch_a, batch_b))
    assert not all(np.array_equal(a, b) for batch_a, batch_b in zip(first, other) for a, b in zip(batch_a, batch_b))


def test_classifier_flags_after_pasting_are_classes_of_the_two_images():
    images, masks, labels = constructed_set()
    dataset = classification_dataset(images, labels, np.arange(6), 32, 6, training=True, seed=9, masks=masks,
                                      copy_paste=1.0)
    fit_classes = {index % 6 + 1 for index in range(6)}
    counts = []
    for _, batch_labels in dataset.take(3):
        for row in batch_labels.numpy():
            classes = set(np.flatnonzero(row) + 1)
            assert classes <= fit_classes and 1 <= len(classes) <= 2
            counts.append(len(classes))
    assert 2 in counts, "a pasted object visible above the minimum area is flagged"


def test_copy_paste_without_masks_is_refused():
    images, _, labels = constructed_set()
    with pytest.raises(ValueError, match="copy-paste needs the training masks"):
        classification_dataset(images, labels, np.arange(6), 32, 3, training=True, copy_paste=0.5)


def test_copy_paste_is_a_probability_and_cannot_meet_cached_features():
    with pytest.raises(ConfigError, match="segmenter.copy_paste"):
        build_config(None, ["segmenter.copy_paste=1.5"])
    with pytest.raises(ConfigError, match="classifier.copy_paste = 0.5 needs augmented images"):
        build_config(None, ["classifier.backbone=dinov2_small", "classifier.weights=none", "classifier.image_size=56",
                            "classifier.freeze_backbone=true", "classifier.finetune_epochs=0",
                            "classifier.copy_paste=0.5"])


@pytest.mark.parametrize("head", [CLASSIFIER, SEGMENTER])
def test_the_training_examples_figure_is_drawn(head, tmp_path):
    images, masks, labels = constructed_set()
    config = build_config(None, [f"runs_dir={tmp_path}", "run_name=r", f"{head.name}.image_size=32",
                                 f"{head.name}.batch_size=4", f"{head.name}.copy_paste=1.0"])
    config.run_dir.mkdir(parents=True)
    data = SimpleNamespace(images=images, masks=masks, labels=labels)
    path = draw_training_examples(config, head, data, np.arange(6), count=4)
    assert path == head.augmented_examples.path(config.run_dir) and path.stat().st_size > 1000
