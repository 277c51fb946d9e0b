"""keras-hub encoders (DINOv2, SegFormer) at tiny sizes with random weights: tiny presets the tests save and load
back, the heads on them, the frozen features cached once, the refusal of VOC-trained weights, and a whole run."""

import json
import shutil

import keras
import numpy as np
import pytest

from voc_pipeline import artifacts
from voc_pipeline.config import build_config
from voc_pipeline.errors import BackboneError, ConfigError, KernelError
from voc_pipeline.models.classifier import build_classifier
from voc_pipeline.models.features import cached_features, split_at_head
from voc_pipeline.models.losses import SegmentationLoss, classifier_loss
from voc_pipeline.models.segmenter import build_segmenter, predict_label_maps

keras_hub = pytest.importorskip("keras_hub")


@pytest.fixture(scope="module")
def tiny_presets(tmp_path_factory):
    """A DINOv2 and a SegFormer preset of a few thousand weights, saved as keras-hub saves presets."""
    folder = tmp_path_factory.mktemp("presets")
    keras.utils.set_random_seed(0)
    keras_hub.models.DINOV2Backbone(patch_size=14, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
                                    num_register_tokens=2, image_shape=(28, 28, 3)).save_to_preset(folder / "dinov2")
    encoder = keras_hub.models.MiTBackbone(layerwise_depths=[1, 1], image_shape=(32, 32, 3), hidden_dims=[8, 16],
                                           num_layers=2, layerwise_num_heads=[1, 2], layerwise_sr_ratios=[4, 2],
                                           max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2])
    keras_hub.models.SegFormerBackbone(image_encoder=encoder, projection_filters=8).save_to_preset(folder / "segformer")
    return folder


def round_trip(model, batch, loss, tmp_path):
    """One training step of the head, the encoder frozen (as with freeze_backbone), then save and load in safe mode:
    the reloaded model predicts exactly the same. (keras-hub saves a DINOv2 whose position embeddings trained at
    another size than 518 by interpolating them back to 518, so an encoder trained end to end reloads within about
    1e-5, not exactly.)"""
    model.get_layer("backbone").trainable = False
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=loss)
    images, targets = batch
    first = model.train_on_batch(images, targets)
    assert np.isfinite(first)
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    reloaded = artifacts.load_model_file(path, "train-cls")
    np.testing.assert_array_equal(model.predict(images, verbose=0), reloaded.predict(images, verbose=0))
    return reloaded


def test_dinov2_heads_from_a_preset_folder_train_predict_and_reload(tiny_presets, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 42, 42, 3), dtype=np.uint8)  # the preset at another size: 3 x 3 patches
    classifier = build_classifier("dinov2_small", 42, weights=str(tiny_presets / "dinov2"))
    assert classifier.get_layer("backbone").count_params() < 100_000  # the preset's own architecture, not the table's
    reloaded = round_trip(classifier, (images, (rng.random((2, 20)) < 0.2).astype("float32")), classifier_loss("bce"),
                          tmp_path)
    assert reloaded.output_shape == (None, 20)
    segmenter = build_segmenter("dinov2_small", 42, weights=str(tiny_presets / "dinov2"))
    reloaded = round_trip(segmenter, (images, rng.integers(0, 21, (2, 42, 42))), SegmentationLoss(21), tmp_path)
    assert reloaded.output_shape == (None, 42, 42, 21)
    # Images of any size come back as label maps at their own size (letterboxed into the model's one size).
    maps = predict_label_maps(reloaded, [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)], 42, 16, flip_tta=True)
    assert maps[0].shape == (50, 70)
    with pytest.raises(BackboneError, match="takes 42 x 42 inputs only: it cannot predict at scale 1.25"):
        predict_label_maps(reloaded, [np.zeros((50, 70, 3), np.uint8)], 42, 16, scales=(1.0, 1.25))


def test_a_segformer_preset_is_rebuilt_at_the_segmenters_size_with_21_classes(tiny_presets, tmp_path):
    rng = np.random.default_rng(1)
    segmenter = build_segmenter("segformer_b0", 64, weights=str(tiny_presets / "segformer"))
    preset = keras_hub.models.SegFormerBackbone.from_preset(str(tiny_presets / "segformer"))
    for loaded, saved in zip(segmenter.get_layer("backbone").get_weights(), preset.get_weights()):
        np.testing.assert_array_equal(loaded, saved)  # the preset's weights, at 64 px instead of its 32
    images = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    reloaded = round_trip(segmenter, (images, rng.integers(0, 21, (2, 64, 64))), SegmentationLoss(21), tmp_path)
    assert reloaded.output_shape == (None, 64, 64, 21)


@pytest.mark.parametrize(("assignment", "message"), [
    ("segmenter.weights=deeplab_v3_plus_resnet50_pascalvoc", "trained on PASCAL VOC, which the course forbids"),
    ("classifier.image_size=100", "classifier.image_size 100 is not a multiple of 14, as dinov2_small needs"),
    ("classifier.weights=imagenet", "dinov2_small has no ImageNet weights of keras.applications; its pretrained "
                                    "weights are the keras-hub preset 'dinov2_small'"),
    ("classifier.finetune_epochs=3", "classifier.freeze_backbone keeps the encoder frozen"),
])
def test_what_a_foundation_encoder_cannot_take_is_refused_by_name(assignment, message):
    with pytest.raises(ConfigError, match=message):
        build_config("cpu-foundation", [assignment])


def test_the_foundation_profiles_resolve():
    for profile in ("cpu-foundation", "kaggle-foundation"):
        config = build_config(profile)
        assert config.classifier.backbone.startswith("dinov2") and config.classifier.freeze_backbone
        assert config.segmenter.weights == config.segmenter.backbone and config.inference.segmenter_scales == (1.0,)


def test_cached_features_are_the_encoders_output_and_follow_its_weights_and_the_images(demo_root, tmp_path, caplog):
    from voc_pipeline.data.competition import load_split

    train = load_split(demo_root, "train", show_progress=False)
    keras.utils.set_random_seed(0)
    model = build_classifier("dinov2_small", 28, weights="none")
    encoder, _ = split_at_head(model, "classifier")
    cached = cached_features(encoder, "classifier", train, 28, 8, tmp_path)
    resized = keras.ops.convert_to_numpy(keras.ops.image.resize(train.images[3], (28, 28), antialias=True))
    expected = encoder.predict(np.clip(np.round(resized), 0, 255).astype(np.uint8)[None], verbose=0)[0]
    np.testing.assert_allclose(cached.features[3], expected, rtol=0.01, atol=0.01)  # float16 in the cache
    mirrored = encoder.predict(np.clip(np.round(resized[:, ::-1]), 0, 255).astype(np.uint8)[None], verbose=0)[0]
    np.testing.assert_allclose(cached.flipped[3], mirrored, rtol=0.01, atol=0.01)
    assert cached.features.dtype == np.float16 and len(cached.features) == len(train.ids)
    np.testing.assert_array_equal(cached.targets, train.labels)

    assert cached_features(encoder, "classifier", train, 28, 8, tmp_path).folder == cached.folder  # reused
    other = build_classifier("dinov2_small", 28, weights="none")  # other random weights: computed again
    other_encoder, _ = split_at_head(other, "classifier")
    again = cached_features(other_encoder, "classifier", train, 28, 8, tmp_path)
    assert again.folder != cached.folder and not cached.folder.exists()
    data = shutil.copytree(demo_root, tmp_path / "other-data")
    image = np.load(data / "train" / "img" / "train_0.npy")
    np.save(data / "train" / "img" / "train_0.npy", 255 - image)
    changed = cached_features(other_encoder, "classifier", load_split(data, "train", show_progress=False), 28, 8, tmp_path)
    assert changed.folder != again.folder
    assert not np.array_equal(changed.features[0], again.features[0])


@pytest.mark.slow
def test_a_whole_run_with_dinov2_heads_trained_on_cached_features(demo_root, tmp_path):
    """Both heads on a DINOv2 encoder, frozen, their heads trained on cached features, through submit; the models
    saved take raw images, and the report says what the encoder was trained on and that it stayed frozen."""
    from voc_pipeline.graph import run_until
    from voc_pipeline.report_parts import segmenter_design, training_text

    assignments = [f'data.root="{demo_root}"', f'runs_dir="{tmp_path / "runs"}"', "run_name='vit'",
                   f'submit.output_dir="{tmp_path / "out"}"']
    for head in ("classifier", "segmenter"):
        assignments += [f"{head}.backbone=dinov2_small", f"{head}.image_size=42", f"{head}.head_epochs=2",
                        f"{head}.finetune_epochs=0", f"{head}.freeze_backbone=true"]
    config = build_config("smoke", assignments)
    outcomes = run_until(config, "submit")
    assert set(outcomes.values()) == {"ran"}
    assert len(list((config.run_dir / "features").iterdir())) == 2  # one cached set per head
    assert (tmp_path / "out" / "submission.csv").is_file()
    facts = artifacts.read_training_facts(artifacts.SEGMENTER_MANIFEST, config.run_dir)
    assert facts["cached_features"] and facts["phases"][0]["trainable_backbone_layers"] == 0
    text = training_text(facts)
    assert "the encoder frozen throughout" in text and "computed once and cached" in text
    manifest = json.loads((config.run_dir / "segmenter.json").read_text())
    assert "patch tokens on their grid (stride 14)" in segmenter_design(manifest, {})
    segmenter = artifacts.load_model_file(config.run_dir / "segmenter.keras", "train-seg")
    assert segmenter.input.dtype == "uint8" and segmenter.get_layer("backbone") is not None


def test_the_kernel_attaches_the_presets_a_profile_loads_as_kaggle_models(tmp_path, monkeypatch):
    from voc_pipeline.kernel import bundle as bundle_module

    def wheels(destination):  # a stand-in for `pip wheel` (a minute here): the metadata is what is checked
        destination.mkdir(parents=True, exist_ok=True)
        (destination / "voc_pipeline-0.0.0-py3-none-any.whl").write_bytes(b"wheel")
        return list(destination.glob("*.whl"))

    monkeypatch.setattr(bundle_module, "build_wheels", wheels)
    for profile, training, expected in (("kaggle-foundation", False, ["keras/dinov2/keras/dinov2_base/1"]),
                                        ("kaggle-foundation", True, ["keras/dinov2/keras/dinov2_base/1"]),
                                        ("kaggle", False, [])):
        bundle = bundle_module.build_bundle(tmp_path / f"{profile}-{training}", "someone", "kul-computer-vision-ga-2-2026",
                                            enable_internet=not expected, training=training, profile=profile)
        metadata = json.loads((bundle / "kernel" / "kernel-metadata.json").read_text())
        assert metadata["model_sources"] == expected and metadata["enable_internet"] is not bool(expected)
    with pytest.raises(KernelError, match="attach it yourself or give its folder"):
        bundle_module.build_bundle(tmp_path / "other", "someone", "kul-computer-vision-ga-2-2026", profile="cpu-foundation",
                                   assignments=("segmenter.weights=dinov2_with_registers_small",))
