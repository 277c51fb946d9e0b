import keras
import numpy as np
import pytest
import tensorflow as tf

from voc_pipeline.backbone_table import BACKBONES
from voc_pipeline.config import build_config
from voc_pipeline.core.classes import VOID_LABEL
from voc_pipeline.errors import BackboneError, ConfigError
from voc_pipeline.models.input_pipeline import random_scale_crop_flip, segmentation_dataset
from voc_pipeline.models.losses import SegmentationLoss
from voc_pipeline.models.segmenter import (
    build_segmenter,
    label_maps_with_and_without_flip,
    predict_label_maps,
    probability_maps,
    scaled_canvas,
)


def small_segmenter(backbone: str, output_stride: int = 16, image_size: int = 64):
    width = 0.5 if backbone.startswith("mobilenet") else 1.0
    return build_segmenter(backbone, image_size, output_stride=output_stride, weights="none", width_multiplier=width,
                           aspp_filters=16, decoder_filters=16)


@pytest.mark.parametrize("backbone", ["mobilenet", "mobilenet_v2"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_is_21_logits_at_any_size_the_output_stride_divides(backbone, output_stride):
    model = small_segmenter(backbone, output_stride)
    for height, width in ((64, 64), (96, 128)):
        logits = model.predict(np.zeros((2, height, width, 3), np.uint8), verbose=0)
        assert logits.shape == (2, height, width, 21) and logits.dtype == np.float32
        low_level, high_level = model.get_layer("backbone").predict(np.zeros((1, height, width, 3), np.float32), verbose=0)
        assert low_level.shape[1:3] == (height // 4, width // 4), "the low-level tap is at stride 4"
        assert high_level.shape[1:3] == (height // output_stride, width // output_stride), "the high-level tap is at the output stride"
    taps = BACKBONES[backbone].taps
    assert model.get_layer("backbone").get_layer(taps[4]) is not None
    assert model.get_layer("backbone").get_layer(taps[output_stride]) is not None


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet50v2", pytest.param("efficientnetv2_s", marks=pytest.mark.large)])
def test_strong_backbones_build_train_a_step_predict_and_reload(backbone, tmp_path):
    model = small_segmenter(backbone)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=SegmentationLoss(21, VOID_LABEL, 0.5))
    rng = np.random.default_rng(0)
    images, masks = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8), rng.integers(0, 21, (2, 64, 64))
    history = model.fit(images, masks, epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    low_level, high_level = model.get_layer("backbone").predict(np.zeros((1, 96, 128, 3), np.float32), verbose=0)
    assert low_level.shape[1:3] == (24, 32) and high_level.shape[1:3] == (6, 8)
    path = tmp_path / "segmenter.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    photos = [rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)]
    np.testing.assert_array_equal(predict_label_maps(model, photos, 64, 16, scales=(0.75, 1.0)),
                                  predict_label_maps(loaded, photos, 64, 16, scales=(0.75, 1.0)))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"backbone": "vgg16"}, "expected one of: mobilenet_v2, mobilenet, resnet50v2, efficientnetv2_s"),
        ({"image_size": 100}, "image size 100 is not divisible by the output stride 16"),
        ({"output_stride": 32}, "output stride must be one of"),
    ],
)
def test_bad_arguments_are_named(arguments, message):
    with pytest.raises(BackboneError, match=message):
        build_segmenter(**{"weights": "none", "image_size": 64, **arguments})


def test_config_refuses_a_size_the_output_stride_does_not_divide():
    with pytest.raises(ConfigError, match="segmenter.image_size 100 is not divisible"):
        build_config(assignments=["segmenter.image_size=100"])


def test_loss_ignores_ignore_pixels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 21, size=(2, 8, 8)).astype(np.int32)
    labels[:, :3] = VOID_LABEL
    logits = rng.normal(size=(2, 8, 8, 21)).astype(np.float32)
    changed = logits.copy()
    changed[:, :3] = rng.normal(size=(2, 3, 8, 21)) * 10  # predictions on ignored pixels do not matter
    for dice_weight in (0.0, 0.5):
        loss = SegmentationLoss(21, VOID_LABEL, dice_weight)
        assert float(loss(labels, logits)) == pytest.approx(float(loss(labels, changed)), rel=1e-6)
    # Without the Dice term it equals plain cross-entropy over the kept pixels only.
    kept = labels[:, 3:]
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(kept, logits[:, 3:])
    assert float(SegmentationLoss(21)(labels, logits)) == pytest.approx(float(expected), rel=1e-5)


def test_dice_term_rewards_overlap():
    labels = np.zeros((1, 4, 4), np.int32)
    labels[:, :2] = 3
    good = np.where(labels[..., None] == np.arange(21), 5.0, 0.0).astype(np.float32)
    loss = SegmentationLoss(21, dice_weight=1.0)
    assert float(loss(labels, good)) < float(loss(labels, np.zeros_like(good)))


def test_label_maps_come_back_at_each_original_size():
    model = build_segmenter("mobilenet_v2", 64, weights="none", width_multiplier=0.35, aspp_filters=16, decoder_filters=16)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in [(50, 70, 3), (90, 40, 3), (5, 3, 3), (64, 64, 3), (200, 120, 3)]]
    maps = predict_label_maps(model, images, 64, 16, batch_size=2, flip_tta=True, scales=(0.75, 1.0, 1.25))
    assert [label_map.shape for label_map in maps] == [image.shape[:2] for image in images]
    assert all(label_map.dtype == np.uint8 and label_map.max() <= 20 for label_map in maps)
    averaged = list(probability_maps(model, images, 64, 16, batch_size=2, flip_tta=False, scales=(0.5, 1.0)))
    half, whole = (list(probability_maps(model, images, 64, 16, batch_size=2, flip_tta=False, scales=(scale,)))
                   for scale in (0.5, 1.0))
    assert all(probabilities.shape == image.shape[:2] + (21,) for probabilities, image in zip(averaged, images))
    for both, first, second in zip(averaged, half, whole):
        np.testing.assert_allclose(both, (first + second) / 2, atol=1e-6)
    np.testing.assert_allclose(averaged[0].sum(-1), 1.0, atol=1e-5)
    assert not np.allclose(half[0], whole[0]), "the two scales must differ for the average to mean anything"


def test_scaled_canvases_are_multiples_of_the_output_stride():
    assert [scaled_canvas(320, scale, 16) for scale in (0.5, 0.75, 1.0, 1.25, 0.01)] == [160, 240, 320, 400, 16]


def test_prediction_argmaxes_after_resizing_probabilities_back():
    """A model that predicts class 7 on the left half and background elsewhere gives a clean left half."""
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    columns = keras.ops.arange(32, dtype="float32")
    left = keras.ops.cast(columns < 16, "float32")
    logits = keras.ops.zeros((32, 32, 21)) + keras.ops.one_hot(7, 21) * 10 * left[None, :, None]
    outputs = keras.layers.Lambda(lambda x: keras.ops.zeros_like(keras.ops.cast(x, "float32")[..., :1]) + logits)(inputs)
    model = keras.Model(inputs, outputs)
    label_map = predict_label_maps(model, [np.zeros((40, 40, 3), np.uint8)], 32, 16, flip_tta=False)[0]
    assert (label_map[:, :18] == 7).all() and (label_map[:, 22:] == 0).all()


def test_joint_augmentation_keeps_image_and_mask_aligned():
    # Large blocks whose grey level encodes their class: after scaling, cropping and flipping, the image
    # still says which class each mask pixel holds (bilinear blending only touches block borders).
    mask = np.kron(np.arange(12).reshape(3, 4), np.ones((20, 20))).astype(np.int32)
    image = np.repeat((mask * 20.0)[..., None], 3, axis=-1).astype(np.float32)
    for seed in range(6):
        augmented_image, augmented_mask, _ = random_scale_crop_flip(
            tf.constant(image), tf.constant(mask[..., None]), tf.constant([seed, 7]), 96, (0.5, 1.5))
        augmented_image, augmented_mask = augmented_image.numpy(), augmented_mask.numpy()[..., 0]
        kept = augmented_mask != VOID_LABEL
        decoded = np.round(augmented_image[..., 0] / 20)
        agreement = (decoded == augmented_mask)[kept].mean()
        misaligned = (decoded[:, ::-1] == augmented_mask)[kept].mean()
        assert agreement > 0.9 and misaligned < 0.5, (seed, agreement, misaligned)
        assert set(np.unique(augmented_mask)) <= set(range(12)) | {VOID_LABEL}, "nearest neighbour only"


def test_images_smaller_than_the_crop_are_padded_with_ignore():
    images = [np.full((10, 6, 3), 100, np.uint8), np.full((30, 50, 3), 50, np.uint8)]
    masks = [np.ones((10, 6), np.uint8), np.full((30, 50), 2, np.uint8)]
    batch_images, batch_masks = next(iter(segmentation_dataset(images, masks, np.arange(2), 32, 2, training=True, seed=0)))
    assert batch_images.shape == (2, 32, 32, 3) and batch_masks.shape == (2, 32, 32)
    assert (batch_masks.numpy() == VOID_LABEL).any()
    evaluation_images, evaluation_masks = next(iter(segmentation_dataset(images, masks, np.arange(2), 32, 2, training=False)))
    # Letterboxed: the 10 x 6 image fills 32 x 19 (rounded) and the rest is padding.
    assert set(np.unique(evaluation_masks.numpy()[0])) == {1, VOID_LABEL}
    assert (evaluation_masks.numpy()[0][:, :19] == 1).all() and (evaluation_masks.numpy()[0][:, 20:] == VOID_LABEL).all()


def test_saved_segmenter_loads_and_predicts_identically(tmp_path):
    model = build_segmenter("mobilenet", 32, weights="none", width_multiplier=0.25, aspp_filters=8, decoder_filters=8)
    path = tmp_path / "segmenter.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    images = [np.random.default_rng(3).integers(0, 256, (45, 30, 3), dtype=np.uint8)]
    batch = np.random.default_rng(4).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(model.predict(batch, verbose=0), loaded.predict(batch, verbose=0), atol=1e-5)
    np.testing.assert_array_equal(predict_label_maps(model, images, 32, 16)[0], predict_label_maps(loaded, images, 32, 16)[0])


def test_label_maps_with_and_without_flip_from_one_pass_equal_the_two_separate_predictions():
    keras.utils.set_random_seed(4)
    model = small_segmenter("mobilenet", image_size=32)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (int(rng.integers(20, 70)), int(rng.integers(20, 70)), 3), dtype=np.uint8)
              for _ in range(5)]
    with_flip, without_flip = label_maps_with_and_without_flip(model, images, 32, 16, batch_size=2)
    for mine, reference in ((with_flip, predict_label_maps(model, images, 32, 16, 2, flip_tta=True)),
                            (without_flip, predict_label_maps(model, images, 32, 16, 2, flip_tta=False))):
        assert [label_map.shape for label_map in mine] == [image.shape[:2] for image in images]
        for label_map, expected in zip(mine, reference):
            np.testing.assert_array_equal(label_map, expected)
