import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from voc_pipeline.cli import main
from voc_pipeline.config import build_config
from voc_pipeline.errors import ConfigError
from voc_pipeline.models.adversarial import (
    binary_cross_entropy_per_image,
    bit_depth_bound,
    check_epsilon,
    differentiable,
    gradient_attack,
    reduce_bit_depth,
    single_class_loss,
)
from voc_pipeline.models.classifier import build_classifier
from voc_pipeline.models.losses import classifier_loss
from voc_pipeline.stages.attack import findings


@pytest.fixture(scope="module")
def small_trained_classifier():
    """A simple CNN fitted for a few steps to random images with fixed labels (enough for gradients to mean something)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels = (rng.random((16, 20)) < 0.2).astype(np.float32)
    model = build_classifier("simple_cnn", 32, weights="none")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=classifier_loss("bce"))
    model.fit(images, labels, epochs=5, batch_size=8, verbose=0)
    return model, images, labels


def test_epsilon_zero_changes_nothing(small_trained_classifier):
    model, images, labels = small_trained_classifier
    adversarial = gradient_attack(differentiable(model), binary_cross_entropy_per_image(labels), images, 0, steps=5)
    np.testing.assert_array_equal(adversarial, images.astype(np.float32))


@pytest.mark.parametrize(("epsilon", "steps"), [(1, 1), (4, 1), (4, 10), (8.5, 3), (255, 2)])
def test_perturbation_stays_within_epsilon_and_valid_pixels(small_trained_classifier, epsilon, steps):
    model, images, labels = small_trained_classifier
    adversarial = gradient_attack(differentiable(model), binary_cross_entropy_per_image(labels), images, epsilon, steps)
    difference = np.abs(adversarial - images.astype(np.float32))
    assert difference.max() <= epsilon and difference.max() > 0
    assert adversarial.min() >= 0 and adversarial.max() <= 255 and np.array_equal(adversarial, np.round(adversarial))


def test_gradients_reach_the_raw_pixels(small_trained_classifier):
    model, images, _ = small_trained_classifier
    forward = differentiable(model)
    np.testing.assert_allclose(forward(tf.constant(images, tf.float32)).numpy(), model.predict_on_batch(images), atol=1e-4)


def test_one_fgsm_step_raises_the_loss(small_trained_classifier):
    model, images, labels = small_trained_classifier
    loss = binary_cross_entropy_per_image(labels)
    forward = differentiable(model)
    adversarial = gradient_attack(forward, loss, images, 4, steps=1)
    clean_loss = float(tf.reduce_mean(loss(forward(tf.constant(images, tf.float32)))))
    adversarial_loss = float(tf.reduce_mean(loss(forward(tf.constant(adversarial)))))
    assert adversarial_loss > clean_loss


def test_targeted_attack_raises_the_target_probability(small_trained_classifier):
    model, images, _ = small_trained_classifier
    target = 7
    before = tf.sigmoid(model.predict_on_batch(images))[:, target].numpy()
    adversarial = gradient_attack(differentiable(model), single_class_loss(np.full(len(images), target), True),
                                  images, 8, steps=5, targeted=True)
    after = tf.sigmoid(model.predict_on_batch(adversarial.astype(np.uint8)))[:, target].numpy()
    assert (after > before).all()


@pytest.mark.parametrize("bits", range(1, 9))
def test_defence_changes_pixels_within_its_stated_bound(bits):
    every_level = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=-1)
    squeezed = reduce_bit_depth(every_level, bits)
    assert np.abs(squeezed.astype(int) - every_level.astype(int)).max() <= bit_depth_bound(bits)
    assert len(np.unique(squeezed)) == min(2 ** bits, 256)


def test_bad_attack_settings_are_refused():
    with pytest.raises(ValueError, match="between 0 and 255"):
        check_epsilon(300)
    with pytest.raises(ConfigError, match="attack.target_class = 'unicorn' is not one of: aeroplane, bicycle"):
        build_config(assignments=["attack.target_class='unicorn'"])
    with pytest.raises(ConfigError, match="attack.epsilons"):
        build_config(assignments=["attack.epsilons=[-1.0]"])
    with pytest.raises(ValueError, match="bit depth"):
        reduce_bit_depth(np.zeros((1, 1, 3)), 0)


def test_attack_without_models_names_the_missing_stage(tmp_path, demo_root, capsys):
    assert main(["attack", "--data", str(demo_root), "--runs-dir", str(tmp_path), "--run", "none"]) == 2
    error = capsys.readouterr().err
    assert "stage attack needs stage data" in error and "voc-pipeline run --until attack" in error


@pytest.mark.slow
def test_attack_stage_writes_table_and_panels_linked_from_the_report(smoke_run):
    arguments = ["--data", smoke_run.data.root, "--profile", "smoke", "--runs-dir", smoke_run.runs_dir,
                 "--run", smoke_run.run_name, "--set", f'submit.output_dir="{smoke_run.submit.output_dir}"']
    assert main(["attack", *arguments]) == 0
    folder = smoke_run.run_dir / "attack"
    for name in ("attack.csv", "attack.md", "classifier_examples.png", "segmenter_examples.png", "success_vs_epsilon.png"):
        assert (folder / name).exists(), name
    table = pd.read_csv(folder / "attack.csv")
    assert set(table["method"]) == {"FGSM", "PGD"} and set(table["defence"]) == {"none", "bit depth 4"}
    assert table["success_rate"].between(0, 1).all()
    untargeted = table[(table["attack"] == "untargeted (flip flags)") & (table["defence"] == "none") & (table["method"] == "PGD")]
    assert untargeted.sort_values("epsilon")["success_rate"].iloc[-1] >= 0.5
    assert "(attack/attack.md)" in (smoke_run.run_dir / "report.md").read_text()


def test_findings_flag_success_that_falls_with_the_budget():
    rows = [{"model": "classifier", "attack": "a", "method": "PGD", "epsilon": epsilon, "defence": defence,
             "success_rate": rate, "clean_score": clean, "adversarial_score": 0.1}
            for epsilon, plain_rate, defended_rate in [(1, 0.9, 0.2), (4, 1.0, 0.8), (16, 0.3, 0.3)]
            for defence, rate, clean in (("none", plain_rate, 0.6), ("bit depth 4", defended_rate, 0.55))]
    text = "\n".join(findings(pd.DataFrame(rows)))
    assert "epsilon 1 succeeds on 90%" in text and "succeeds on 20% instead of 90%" in text
    assert "gradient masking" in text and "clean score 0.600 without the defence, 0.550 with it" in text
