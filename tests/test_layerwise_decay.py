"""What the two-phase schedule freezes for each backbone family, and layer-wise learning-rate decay of fine-tuning."""

import keras
import numpy as np
import pytest

from voc_pipeline.config import build_config
from voc_pipeline.errors import ConfigError
from voc_pipeline.models.backbones import build_backbone, stage_of_each_layer
from voc_pipeline.models.classifier import build_classifier
from voc_pipeline.models.training import (
    LayerwiseAdamW,
    plan_phases,
    set_backbone_trainable,
    stage_rate_multipliers,
)


@pytest.mark.parametrize("profile", [None, "smoke", "cpu", "cpu-scratch", "kaggle"])
def test_layerwise_decay_and_the_refit_are_off_unless_asked_for(profile):
    config = build_config(profile)
    for section in (config.classifier, config.segmenter):
        assert all(phase.layer_decay == 1.0 for phase in plan_phases(section)) and not section.refit_all


@pytest.mark.parametrize("head", ["classifier", "segmenter"])
def test_kaggle_strong_fine_tunes_its_whole_backbone_at_rates_decaying_down_the_stages(head):
    """What the profile makes training do: the head phase trains the head alone at one rate; fine-tuning then
    trains every backbone layer, each of the backbone's four stages slower than the one above it and all slower
    than the head (the multipliers stand for the head's rate, 1)."""
    section = getattr(build_config("kaggle-strong"), head)
    model = build_classifier(section.backbone, 32, weights="none")  # the backbone's stages do not depend on the size
    head_phase, finetune = plan_phases(section)
    set_backbone_trainable(model, head_phase.trainable_fraction)
    assert not any(layer.trainable for layer in model.get_layer("backbone").layers) and head_phase.layer_decay == 1.0
    set_backbone_trainable(model, finetune.trainable_fraction, finetune.keep_frozen)
    assert all(layer.trainable for layer in model.get_layer("backbone").layers)
    multipliers = stage_rate_multipliers(model, section.backbone, finetune.layer_decay)
    rates = sorted(set(multipliers.values()), reverse=True)
    assert len(rates) == 4 and rates[0] < 1.0
    assert all(lower < upper for upper, lower in zip(rates, rates[1:]))


def test_only_fine_tuning_decays():
    phases = plan_phases(build_config(assignments=["classifier.layerwise_lr_decay=0.8"]).classifier)
    assert [(phase.name, phase.layer_decay) for phase in phases] == [("head", 1.0), ("finetune", 0.8)]


@pytest.mark.parametrize(("assignment", "message"), [
    ("classifier.layerwise_lr_decay=0", r"classifier.layerwise_lr_decay = 0.0, outside its range \(0, 1\]"),
    ("classifier.layerwise_lr_decay=1.5", "outside its range"),
])
def test_decay_outside_its_range_is_refused(assignment, message):
    with pytest.raises(ConfigError, match=message):
        build_config(assignments=[assignment])


def test_decay_needs_a_backbone_with_stages():
    with pytest.raises(ConfigError, match="classifier.layerwise_lr_decay = 0.8 needs a backbone with stages, and "
                                          "classifier.backbone 'vgg16' has none"):
        build_config(assignments=["classifier.backbone=vgg16", "classifier.layerwise_lr_decay=0.8"])


def test_convnext_stages_follow_its_blocks():
    stages = stage_of_each_layer(build_backbone("convnext_tiny", 32, "none"), "convnext_tiny")
    assert stages["convnext_tiny_stem"] == 0 and stages["convnext_tiny_stage_0_block_2_identity"] == 0
    for stage in (1, 2, 3):
        assert stages[f"convnext_tiny_downsampling_block_{stage - 1}"] == stage
        assert stages[f"convnext_tiny_stage_{stage}_block_0_depthwise_conv"] == stage
    assert list(stages.values()) == sorted(stages.values()) and max(stages.values()) == 3


def test_resnet_stages_end_at_its_taps():
    stages = stage_of_each_layer(build_backbone("resnet50v2", 32, "none"), "resnet50v2")
    assert stages["conv2_block2_out"] == 0 and stages["conv2_block3_preact_bn"] == 1
    assert stages["conv4_block5_out"] == 2 and stages["conv4_block6_preact_bn"] == 3 and stages["post_relu"] == 3
    assert list(stages.values()) == sorted(stages.values())


def test_multipliers_decay_from_the_top_stage_down_and_leave_the_head_alone():
    model = build_classifier("convnext_tiny", 32, weights="none")
    multipliers = stage_rate_multipliers(model, "convnext_tiny", 0.5)
    assert multipliers["convnext_tiny_stem/convnext_tiny_stem_conv/kernel"] == 0.5 ** 4
    assert multipliers["convnext_tiny_stage_3_block_2_pointwise_conv_2/kernel"] == 0.5
    assert not any(path.startswith("logits") for path in multipliers)
    assert {variable.path for variable in model.get_layer("backbone").weights} == set(multipliers)


def fine_tuned(backbone: str, **options) -> keras.Model:
    """A classifier on `backbone` with its fine-tuning phase's freezing applied, as planned from the table."""
    settings = build_config(assignments=[f"classifier.backbone={backbone}", "classifier.weights=imagenet",
                                         "classifier.unfreeze_fraction=1.0"]).classifier
    finetune = plan_phases(settings)[-1]
    model = build_classifier(backbone, 32, weights="none", **options)
    set_backbone_trainable(model, finetune.trainable_fraction, finetune.keep_frozen)
    return model


def test_the_family_decides_what_fine_tuning_keeps_frozen():
    convnext = fine_tuned("convnext_tiny")
    norms = [layer for layer in convnext.get_layer("backbone").layers if isinstance(layer, keras.layers.LayerNormalization)]
    assert norms and all(layer.trainable for layer in norms)
    mobilenet = fine_tuned("mobilenet_v2", width_multiplier=0.35)
    batch_norms = [layer for layer in mobilenet.get_layer("backbone").layers
                   if isinstance(layer, keras.layers.BatchNormalization)]
    assert batch_norms and not any(layer.trainable for layer in batch_norms)
    convolutions = [layer for layer in mobilenet.get_layer("backbone").layers if isinstance(layer, keras.layers.Conv2D)]
    assert any(layer.trainable for layer in convolutions)


def two_layer_model() -> keras.Model:
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="low")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="high")(hidden))


def one_step(optimizer) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(weights before, weights after) one step of `optimizer` on a fixed model and batch."""
    keras.utils.set_random_seed(0)
    model = two_layer_model()
    before = {variable.path: keras.ops.convert_to_numpy(variable).copy() for variable in model.weights}
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(0)
    model.train_on_batch(rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 2)).astype("float32"))
    return before, {variable.path: keras.ops.convert_to_numpy(variable) for variable in model.weights}


def test_a_multiplier_scales_the_step_and_its_weight_decay_and_one_changes_nothing():
    before, plain = one_step(keras.optimizers.AdamW(0.01, weight_decay=0.1))
    _, same = one_step(LayerwiseAdamW(0.01, decoupled_weight_decay=0.1))
    _, decayed = one_step(LayerwiseAdamW(0.01, rate_multipliers={"low/kernel": 0.25, "low/bias": 0.25},
                                         decoupled_weight_decay=0.1))
    for path in before:
        np.testing.assert_allclose(same[path], plain[path], rtol=1e-6, atol=1e-7)
        factor = 0.25 if path.startswith("low/") else 1.0
        np.testing.assert_allclose(decayed[path] - before[path], factor * (plain[path] - before[path]), rtol=1e-4, atol=1e-7)
        assert np.abs(plain[path] - before[path]).max() > 1e-4


def test_the_optimizer_survives_a_save_and_load(tmp_path):
    model = two_layer_model()
    model.compile(optimizer=LayerwiseAdamW(0.01, rate_multipliers={"low/kernel": 0.5}, decoupled_weight_decay=0.1),
                  loss="mse")
    model.train_on_batch(np.ones((2, 3), "float32"), np.ones((2, 2), "float32"))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.optimizer.rate_multipliers == {"low/kernel": 0.5} and loaded.optimizer.decoupled_weight_decay == 0.1
