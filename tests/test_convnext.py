"""ConvNeXt Tiny/Small/Base for both heads, at tiny sizes with random weights: the taps the backbone table names
sit at their strides, and each head builds, trains a step, predicts, saves and reloads in safe mode."""

import keras
import numpy as np
import pytest

from voc_pipeline.backbone_table import BACKBONES
from voc_pipeline.core.classes import VOID_LABEL
from voc_pipeline.models.backbones import build_backbone, preprocessing_layer, tapped_feature_map
from voc_pipeline.models.classifier import build_classifier, predict_probabilities
from voc_pipeline.models.losses import SegmentationLoss, classifier_loss
from voc_pipeline.models.segmenter import build_segmenter, predict_label_maps

CONVNEXTS = ("convnext_tiny", "convnext_small", "convnext_base")
# Small and Base share Tiny's code and differ in depth and width only; their full round trip (tens of millions
# of parameters to train, save and reload) runs with `make test-large`, Tiny's in every `make test`.
ROUND_TRIP = ("convnext_tiny", *(pytest.param(name, marks=pytest.mark.large) for name in CONVNEXTS[1:]))


@pytest.mark.parametrize("name", CONVNEXTS)
def test_each_tap_is_at_its_stride(name):
    """The named layers hold the features at strides 4, 8 and 16 (16 from the third stage), at any input size."""
    network = build_backbone(name, 64, "none", any_size=True)
    taps = BACKBONES[name].taps
    assert sorted(taps) == [4, 8, 16]
    assert taps[16] == f"{name}_downsampling_block_2/input", "stride 16 is the third stage's output"
    extractor = keras.Model(network.input, [tapped_feature_map(network, taps[stride]) for stride in sorted(taps)])
    features = extractor.predict(np.zeros((1, 64, 96, 3), np.float32), verbose=0)
    for stride, feature_map in zip(sorted(taps), features):
        assert feature_map.shape[1:3] == (64 // stride, 96 // stride), (name, stride)
    # The third stage is wider than the second and narrower than the fourth.
    assert features[1].shape[-1] < features[2].shape[-1] < network.output.shape[-1]


def test_convnext_takes_raw_pixels_and_preprocesses_inside():
    pixels = np.array([[[[0, 0, 0], [255, 255, 255]]]], dtype=np.uint8)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(preprocessing_layer("convnext_tiny")(pixels))[0, 0],
                               [[0, 0, 0], [255, 255, 255]])
    network = build_backbone("convnext_tiny", 32, "none")
    assert network.get_layer("convnext_tiny_prestem_normalization") is not None


@pytest.mark.slow
@pytest.mark.parametrize("name", ROUND_TRIP)
def test_convnext_classifier_builds_trains_a_step_predicts_and_reloads(name, tmp_path):
    model = build_classifier(name, image_size=64, num_classes=20, weights="none", dropout=0.3)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=classifier_loss("asymmetric"))
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8), (rng.random((2, 20)) < 0.2).astype("float32")
    history = model.fit(images, labels, epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    path = tmp_path / "classifier.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    photos = [rng.integers(0, 256, (70, 90, 3), dtype=np.uint8) for _ in range(2)]
    before, after = (predict_probabilities([chosen], photos, 2, flip_tta=True) for chosen in (model, loaded))
    assert before.shape == (2, 20) and np.all((before >= 0) & (before <= 1))
    np.testing.assert_allclose(before, after, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ROUND_TRIP)
def test_convnext_segmenter_builds_trains_a_step_predicts_and_reloads(name, tmp_path):
    model = build_segmenter(name, 64, output_stride=16, weights="none", aspp_filters=16, decoder_filters=16)
    low_level, high_level = model.get_layer("backbone").predict(np.zeros((1, 96, 128, 3), np.float32), verbose=0)
    assert low_level.shape[1:3] == (24, 32) and high_level.shape[1:3] == (6, 8)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=SegmentationLoss(21, VOID_LABEL, 0.5))
    rng = np.random.default_rng(0)
    images, masks = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8), rng.integers(0, 21, (2, 64, 64))
    history = model.fit(images, masks, epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    path = tmp_path / "segmenter.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    photos = [rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)]
    np.testing.assert_array_equal(predict_label_maps(model, photos, 64, 16, scales=(0.75, 1.0)),
                                  predict_label_maps(loaded, photos, 64, 16, scales=(0.75, 1.0)))
