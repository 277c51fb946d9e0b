import logging
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from voc_pipeline.backbone_table import BACKBONES, CLASSIFIER_BACKBONES
from voc_pipeline.errors import TrainingDivergedError
from voc_pipeline.models import backbones
from voc_pipeline.models.backbones import (
    BackboneError,
    WeightsUnavailableError,
    build_backbone,
    preprocessing_layer,
)
from voc_pipeline.models.classifier import build_classifier, predict_plain_and_flip_tta, predict_probabilities
from voc_pipeline.models.input_pipeline import classification_dataset
from voc_pipeline.models.losses import AsymmetricLoss, classifier_loss
from voc_pipeline.models.training import Phase, fit_in_phases, set_backbone_trainable


@pytest.mark.parametrize("backbone", sorted(CLASSIFIER_BACKBONES))
def test_builder_outputs_float32_logits_for_every_backbone(backbone):
    model = build_classifier(backbone, image_size=32, num_classes=20, weights="none")
    assert model.input.dtype == "uint8" and tuple(model.input.shape) == (None, 32, 32, 3)
    logits = model.predict(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), verbose=0)
    assert logits.shape == (2, 20) and logits.dtype == np.float32
    assert model.get_layer("backbone") is not None and model.get_layer("logits").activation.__name__ == "linear"


@pytest.mark.parametrize("backbone", sorted(set(BACKBONES) - set(CLASSIFIER_BACKBONES)))
def test_segmenter_only_backbones_are_refused_as_classifiers_by_name(backbone):
    with pytest.raises(BackboneError, match=f"{backbone} carries no classifier head"):
        build_classifier(backbone, image_size=32, num_classes=20, weights="none")


@pytest.mark.parametrize(
    ("backbone", "expected_black", "expected_white"),
    [
        ("mobilenet_v2", [-1, -1, -1], [1, 1, 1]),
        ("resnet50v2", [-1, -1, -1], [1, 1, 1]),
        ("vgg16", [-103.939, -116.779, -123.68], [255 - 103.939, 255 - 116.779, 255 - 123.68]),
        ("simple_cnn", [0, 0, 0], [1, 1, 1]),
        ("efficientnetv2_s", [0, 0, 0], [255, 255, 255]),
    ],
)
def test_preprocessing_maps_uint8_to_the_backbone_range(backbone, expected_black, expected_white):
    pixels = np.array([[[[0, 0, 0], [255, 255, 255]]]], dtype=np.uint8)
    output = keras.ops.convert_to_numpy(preprocessing_layer(backbone)(pixels))
    np.testing.assert_allclose(output[0, 0, 0], expected_black, atol=1e-4)
    np.testing.assert_allclose(output[0, 0, 1], expected_white, atol=1e-4)


@pytest.mark.slow
@pytest.mark.large
def test_strong_profile_classifier_builds_trains_a_step_predicts_and_reloads(tmp_path):
    """EfficientNetV2-S (kaggle-strong's classifier before ConvNeXt) with the asymmetric loss at a tiny size, random weights."""
    model = build_classifier("efficientnetv2_s", image_size=64, num_classes=20, weights="none", dropout=0.3)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=classifier_loss("asymmetric"))
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8), (rng.random((4, 20)) < 0.2).astype("float32")
    history = model.fit(images, labels, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    path = tmp_path / "classifier.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    photos = [rng.integers(0, 256, (70, 90, 3), dtype=np.uint8) for _ in range(3)]
    before, after = (predict_probabilities([chosen], photos, 2, flip_tta=True) for chosen in (model, loaded))
    assert before.shape == (3, 20) and np.all((before >= 0) & (before <= 1))
    np.testing.assert_allclose(before, after, atol=1e-6)


def test_caffe_preprocessing_reverses_channels():
    pixel = np.array([[[[10, 20, 30]]]], dtype=np.uint8)
    output = keras.ops.convert_to_numpy(preprocessing_layer("vgg16")(pixel))[0, 0, 0]
    np.testing.assert_allclose(output, [30 - 103.939, 20 - 116.779, 10 - 123.68], atol=1e-4)


def test_unknown_backbone_and_loss_list_the_valid_names():
    with pytest.raises(BackboneError, match="expected one of: mobilenet_v2, mobilenet, vgg16"):
        build_classifier("resnet9000", 32, weights="none")
    with pytest.raises(ValueError, match="expected one of: bce, focal, asymmetric"):
        classifier_loss("hinge")


def test_unsupported_sizes_say_which_are_supported(tmp_path):
    with pytest.raises(BackboneError, match="96, 128, 160, 192, 224"):
        build_backbone("mobilenet_v2", 100, "imagenet")
    with pytest.raises(BackboneError, match="at least 32"):
        build_backbone("mobilenet_v2", 16, "none")


def test_missing_weights_file_names_the_three_options(tmp_path):
    with pytest.raises(BackboneError, match=r"does not exist.*weights=imagenet.*weights=<path.*weights=none"):
        build_backbone("mobilenet_v2", 96, str(tmp_path / "absent.h5"))


def test_failed_imagenet_download_names_the_three_options(monkeypatch, tmp_path):
    # Simulate a machine without internet: Keras's downloader fails to reach the host.
    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match=r"could not download.*weights=imagenet.*weights=<path.*weights=none"):
        build_backbone("mobilenet_v2", 96, "imagenet")


def test_weights_file_path_is_loaded(tmp_path):
    source = build_backbone("mobilenet_v2", 96, "none", width_multiplier=0.35)
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    loaded = build_backbone("mobilenet_v2", 96, str(path), width_multiplier=0.35)
    for expected, actual in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(expected, actual)
    assert backbones.resolve_weights("None") is None


def test_fine_tuning_keeps_batch_norm_frozen_and_trains_only_the_top():
    # simple_cnn, because a randomly initialised MobileNet with frozen (identity) batch norm saturates its
    # ReLU6 activations and passes no gradient at all, which would hide what this test checks.
    model = build_classifier("simple_cnn", 32, weights="none")
    trainable = set_backbone_trainable(model, 0.5, BACKBONES["simple_cnn"].frozen_when_fine_tuning)
    backbone = model.get_layer("backbone")
    batch_norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert trainable > 0 and all(not layer.trainable for layer in batch_norms)
    first_conv, last_conv = backbone.get_layer("block1_conv1"), backbone.get_layer("block4_conv2")
    before = {name: [w.copy() for w in layer.get_weights()] for name, layer in
              [("bn", batch_norms[-1]), ("first", first_conv), ("last", last_conv)]}
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=classifier_loss("bce"))
    rng = np.random.default_rng(0)
    model.fit(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), (rng.random((8, 20)) < 0.2).astype("float32"),
              epochs=1, verbose=0)
    for expected, actual in zip(before["bn"], batch_norms[-1].get_weights()):
        np.testing.assert_array_equal(expected, actual)  # gamma, beta and moving statistics untouched
    np.testing.assert_array_equal(before["first"][0], first_conv.get_weights()[0])
    assert not np.array_equal(before["last"][0], last_conv.get_weights()[0])


def test_asymmetric_loss_ignores_easy_negatives_and_round_trips():
    loss = AsymmetricLoss(clip=0.05)
    easy_negative = float(loss(np.zeros((1, 2)), np.full((1, 2), -4.0)))  # probability 0.018 < clip
    assert easy_negative == pytest.approx(0.0, abs=1e-6)
    assert float(loss(np.ones((1, 2)), np.full((1, 2), -2.0))) > 1.0
    restored = AsymmetricLoss.from_config(loss.get_config())
    assert restored.gamma_negative == 4.0 and restored.clip == 0.05


def test_saved_classifier_loads_and_predicts_identically(tmp_path):
    model = build_classifier("vgg16", 32, weights="none", dropout=0.3)
    path = tmp_path / "classifier.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)  # safe mode: no Lambda layers inside
    images = [np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(3)]
    np.testing.assert_allclose(predict_probabilities([model], images, 2), predict_probabilities([loaded], images, 2), atol=1e-6)


def test_flip_tta_averages_an_image_and_its_mirror():
    model = build_classifier("simple_cnn", 32, weights="none")
    image = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    plain = predict_probabilities([model], [image], flip_tta=False)
    mirrored = predict_probabilities([model], [image[:, ::-1].copy()], flip_tta=False)
    np.testing.assert_allclose(predict_probabilities([model], [image], flip_tta=True), (plain + mirrored) / 2, atol=1e-5)


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    model = build_classifier("simple_cnn", 32, weights="none")
    epochs_seen = []

    def batches():
        # The second epoch's labels are NaN, so its loss is NaN.
        epochs_seen.append(1)
        label = np.nan if len(epochs_seen) > 1 else 1.0
        for _ in range(2):
            yield np.zeros((4, 32, 32, 3), np.uint8), np.full((4, 20), label, np.float32)

    signature = (tf.TensorSpec((None, 32, 32, 3), tf.uint8), tf.TensorSpec((None, 20), tf.float32))
    train = tf.data.Dataset.from_generator(batches, output_signature=signature)
    validation = tf.data.Dataset.from_tensors((np.zeros((2, 32, 32, 3), np.uint8), np.ones((2, 20), np.float32)))

    def compile_model(model, schedule, phase=None):
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=classifier_loss("bce"))

    checkpoint = tmp_path / "checkpoints" / "model.keras"
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 2, batch 1.*last good checkpoint is kept"):
        fit_in_phases(model, compile_model, [Phase("full", 3, 1e-3, 0, None)], train, validation, 2, checkpoint,
                      tmp_path / "history.csv", monitor="val_loss", mode="min", patience=5)
    assert checkpoint.exists() and (tmp_path / "history.csv").exists()


@pytest.mark.slow
def test_training_step_runs_under_mirrored_strategy_on_two_cpus():
    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from voc_pipeline.models.classifier import build_classifier
        from voc_pipeline.models.input_pipeline import classification_dataset
        from voc_pipeline.models.losses import classifier_loss
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            model = build_classifier("mobilenet_v2", 32, weights="none", width_multiplier=0.35)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=classifier_loss("asymmetric"))
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (40, 30, 3), dtype=np.uint8) for _ in range(8)]
        labels = (rng.random((8, 20)) < 0.2).astype("float32")
        data = classification_dataset(images, labels, np.arange(8), 32, 4, training=True)
        history = model.fit(data, epochs=1, verbose=0)
        assert strategy.num_replicas_in_sync == 2
        assert np.isfinite(history.history["loss"][0])
        print("replicas", strategy.num_replicas_in_sync)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2" in result.stdout


def test_training_pipeline_keeps_labels_and_shapes():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (int(rng.integers(20, 60)), int(rng.integers(20, 60)), 3), dtype=np.uint8) for _ in range(6)]
    labels = np.eye(6, 20, dtype=np.float32)
    data = classification_dataset(images, labels, np.arange(6), 32, 6, training=True, seed=1)
    batch_images, batch_labels = next(iter(data))
    assert batch_images.shape == (6, 32, 32, 3) and batch_images.dtype == tf.uint8
    # Shuffled, but every label row is one of the originals and each appears once.
    assert sorted(np.argmax(batch_labels.numpy(), 1).tolist()) == list(range(6))
    again = next(iter(classification_dataset(images, labels, np.arange(6), 32, 6, training=True, seed=1)))
    np.testing.assert_array_equal(batch_images.numpy(), again[0].numpy())


def test_interrupted_training_resumes_where_it_stopped(tmp_path, caplog):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labels = (rng.random((8, 20)) < 0.3).astype(np.float32)
    epochs_started = []

    def batches(fail_at_epoch):
        def generate():
            epochs_started.append(1)
            if len(epochs_started) == fail_at_epoch:
                raise RuntimeError("simulated interruption")
            for start in (0, 4):
                yield images[start:start + 4], labels[start:start + 4]
        return generate

    signature = (tf.TensorSpec((None, 32, 32, 3), tf.uint8), tf.TensorSpec((None, 20), tf.float32))
    validation = tf.data.Dataset.from_tensors((images, labels))
    phases = [Phase("head", 2, 1e-3, 0, 0.0), Phase("finetune", 2, 1e-4, 0, 0.5)]
    checkpoint, history = tmp_path / "checkpoints" / "model.keras", tmp_path / "history.csv"

    def compile_model(model, schedule, phase=None):
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=classifier_loss("bce"))

    def train(fail_at_epoch):
        model = build_classifier("simple_cnn", 32, weights="none")
        data = tf.data.Dataset.from_generator(batches(fail_at_epoch), output_signature=signature)
        return fit_in_phases(model, compile_model, phases, data, validation, 2, checkpoint, history,
                             monitor="val_loss", mode="min", patience=10, identity={"run": 1})

    # Interrupted in the first epoch of fine-tuning (the third epoch overall).
    with pytest.raises(Exception, match="simulated interruption"):
        train(fail_at_epoch=3)
    assert (tmp_path / "checkpoints" / "model_state" / "phase0_head.weights.h5").exists()
    epochs_started.clear()
    with caplog.at_level(logging.INFO):
        records = train(fail_at_epoch=None)
    assert "resuming an interrupted training" in caplog.text and "phase head already finished" in caplog.text
    assert [(record["epoch"], record["phase"]) for record in records] == [(1, "head"), (2, "head"), (3, "finetune"), (4, "finetune")]
    assert len(epochs_started) == 2, "only the fine-tuning epochs ran again"
    assert not (tmp_path / "checkpoints" / "model_state").exists(), "state is removed once training completes"


def test_plain_and_flip_tta_probabilities_from_one_pass_equal_the_two_separate_predictions():
    keras.utils.set_random_seed(2)
    models = [build_classifier("simple_cnn", 32, weights="none") for _ in range(2)]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (int(rng.integers(20, 60)), int(rng.integers(20, 60)), 3), dtype=np.uint8)
              for _ in range(5)]
    plain, flip_tta = predict_plain_and_flip_tta(models, images, batch_size=2)
    np.testing.assert_array_equal(plain, predict_probabilities(models, images, 2, flip_tta=False))
    np.testing.assert_array_equal(flip_tta, predict_probabilities(models, images, 2, flip_tta=True))
    assert not np.array_equal(plain, flip_tta)
